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
