package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
)

type srv struct{ extprocv3.UnimplementedExternalProcessorServer }

func (srv) Process(st extprocv3.ExternalProcessor_ProcessServer) error {
	msgs := make(chan *extprocv3.ProcessingRequest)
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				log.Println("recv end:", err)
				close(msgs)
				return
			}
			msgs <- m
		}
	}()
	var idle <-chan time.Time
	var held []byte
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return nil
			}
			switch r := m.Request.(type) {
			case *extprocv3.ProcessingRequest_ResponseHeaders:
				log.Println("resp headers (held)")
				if os.Getenv("HOLD") == "" {
					st.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{}}})
				}
				idle = time.After(800 * time.Millisecond)
			case *extprocv3.ProcessingRequest_ResponseBody:
				log.Printf("body %q eos=%v", r.ResponseBody.Body, r.ResponseBody.EndOfStream)
				if os.Getenv("HOLD") != "" {
					held = append(held, r.ResponseBody.Body...)
					if r.ResponseBody.EndOfStream {
						st.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: ":status", RawValue: []byte("203")}}, {Header: &corev3.HeaderValue{Key: "x-test", RawValue: []byte("yes")}}, {Header: &corev3.HeaderValue{Key: "content-length", RawValue: []byte(fmt.Sprint(len(held)))}}}}}}}})
						st.Send(bodyResp(held, true))
					}
					continue
				}
				st.Send(bodyResp(r.ResponseBody.Body, r.ResponseBody.EndOfStream))
				idle = time.After(800 * time.Millisecond)
			case *extprocv3.ProcessingRequest_ResponseTrailers:
				log.Println("trailers")
				st.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseTrailers{ResponseTrailers: &extprocv3.TrailersResponse{}}})
			case *extprocv3.ProcessingRequest_RequestHeaders:
				log.Println("req headers")
				st.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}})
			case *extprocv3.ProcessingRequest_RequestBody:
				log.Printf("req body %q", r.RequestBody.Body)
				st.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: &extprocv3.BodyResponse{}}})
			default:
				log.Printf("other %T", r)
			}
		case <-idle:
			if os.Getenv("HOLD") != "" {
				continue
			}
			log.Println("stall: injecting")
			for i := range 3 {
				st.Send(bodyResp([]byte(fmt.Sprintf("data: resumed %d\n\n", i)), false))
				time.Sleep(200 * time.Millisecond)
			}
			st.Send(bodyResp([]byte("data: [DONE]\n\n"), true))
			idle = nil
		}
	}
}

func bodyResp(b []byte, eos bool) *extprocv3.ProcessingResponse {
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{
		BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_StreamedResponse{StreamedResponse: &extprocv3.StreamedBodyResponse{Body: b, EndOfStream: eos}}}}}}}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "upstream" {
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("content-type", "text/event-stream")
			n := 3
			if r.URL.Path == "/long" {
				n = 20
			}
			for i := range n {
				fmt.Fprintf(w, "data: tok %d\n\n", i)
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
			if n == 20 {
				fmt.Fprint(w, "data: [DONE]\n\n")
				return
			}
			<-r.Context().Done()
			log.Println("upstream: request context done:", r.Context().Err())
		})
		log.Fatal(http.ListenAndServe("127.0.0.1:27001", nil))
	}
	l, err := net.Listen("tcp", "127.0.0.1:27002")
	if err != nil {
		log.Fatal(err)
	}
	g := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(g, srv{})
	log.Fatal(g.Serve(l))
}
