package xds

import (
	"testing"
)

// resume.enabled: false leaves the resume filter out of the listener and
// off every route: responses then never pass through the processor.
func TestResumeOff(t *testing.T) {
	p := quickstart(t)
	off := false
	p.Resume.Enabled = &off
	if p.ResumeOn() {
		t.Fatal("ResumeOn with resume.enabled false")
	}
	filters, err := withResume(p, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(filters) != 1 {
		t.Errorf("filters %v, want the router alone", filters)
	}
	rc, err := RouteConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, vh := range rc.VirtualHosts {
		for _, r := range vh.Routes {
			if _, on := r.TypedPerFilterConfig[ResumeFilter]; on {
				t.Errorf("route %s enables the resume filter", r.Name)
			}
		}
	}
}

// resume.whole_answers: false keeps the filter for streams only.
func TestResumeStreamsOnly(t *testing.T) {
	p := quickstart(t)
	off := false
	p.Resume.WholeAnswers = &off
	rc, err := RouteConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, vh := range rc.VirtualHosts {
		for _, r := range vh.Routes {
			_, on := r.TypedPerFilterConfig[ResumeFilter]
			if want := r.Name == streamRouteName; on != want {
				t.Errorf("route %s enables the resume filter: %v, want %v", r.Name, on, want)
			}
		}
	}
}

// The resume filter fails open, sends whole answers' chunks while detour
// holds their headers, and lets held headers wait through a stall; detour
// may extend the wait up to the request timeout while another backend
// answers instead.
func TestResumeFilterConfig(t *testing.T) {
	p := quickstart(t)
	c := ResumeFilterConfig(p)
	if !c.FailureModeAllow || !c.SendBodyWithoutWaitingForHeaderResponse {
		t.Errorf("failure_mode_allow %v, send_body_without_waiting %v; want both", c.FailureModeAllow, c.SendBodyWithoutWaitingForHeaderResponse)
	}
	if got, want := c.MessageTimeout.AsDuration(), p.Resume.StallTimeout.D()+p.ExtProc.MessageTimeout.D(); got != want {
		t.Errorf("message timeout %v, want stall_timeout + extproc.message_timeout = %v", got, want)
	}
	if got, want := c.MaxMessageTimeout.AsDuration(), p.Envoy.RequestTimeout.D(); got != want {
		t.Errorf("max message timeout %v, want envoy.request_timeout %v", got, want)
	}
	if md := c.GrpcService.GetInitialMetadata(); len(md) != 1 || md[0].Value != "resume" {
		t.Errorf("initial metadata %v, want the resume stage marked", md)
	}
}
