package sim_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/detourhq/detour/sim"
)

func Example() {
	s, err := sim.New(sim.Config{Name: "primary", Models: []string{"gpt-sim"}, DefaultTokens: 4})
	if err != nil {
		panic(err)
	}
	if err := s.Start(context.Background()); err != nil {
		panic(err)
	}
	defer s.Close(context.Background())

	post := func() {
		resp, err := http.Post("http://"+s.Addr()+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"gpt-sim","messages":[{"role":"user","content":"hi"}]}`))
		if err != nil {
			panic(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Println(resp.StatusCode, resp.Header.Get("x-sim-name"), strings.Contains(string(body), `"content":"tok0 tok1 tok2 tok3"`))
	}
	post()
	s.SetFault(sim.Fault{Status: 503, RetryAfterS: 1})
	post()
	s.ClearFault()
	post()
	fmt.Println(s.Stats().ByStatus)
	// Output:
	// 200 primary true
	// 503 primary false
	// 200 primary true
	// map[200:2 503:1]
}
