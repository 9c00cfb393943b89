package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/detourhq/detour/healthview"
	"github.com/detourhq/detour/healthview/viewhttp"
)

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr)
	var pf policyFlag
	pf.register(fs)
	url := fs.String("url", "", "the control plane's view (default: /v1/status on xds.metrics of the policy)")
	asJSON := fs.Bool("json", false, "print the view as JSON")
	verbose := fs.Bool("v", false, "also print each backend's settings, transitions and probes")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the control plane")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *url == "" {
		p, err := pf.load()
		if err != nil {
			return err
		}
		*url = p.ControllerURL()
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	v, err := viewhttp.Fetch(ctx, &http.Client{}, *url, 0)
	if err != nil {
		return fmt.Errorf("is `detour xds` running? %w", err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	printStatus(stdout, v, *verbose, time.Now())
	return nil
}

// printStatus renders the view for people: one line per backend and
// route, then (verbose) why every pushed value is what it is.
func printStatus(w io.Writer, v *healthview.Snapshot, verbose bool, now time.Time) {
	fmt.Fprintf(w, "controller view %d, %s ago, signals from %s\n", v.Version, age(now, v.At), v.Source)
	if v.SignalError != "" {
		fmt.Fprintf(w, "signals incomplete: %s\n", v.SignalError)
	}
	names := make([]string, 0, len(v.Backends))
	for n := range v.Backends {
		names = append(names, n)
	}
	sort.Strings(names)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nBACKEND\tSTATE\tFOR\tREQUESTS\tERRORS\tP95\tTTFT\tTOKENS/S\tWHY")
	for _, n := range names {
		b := v.Backends[n]
		s := b.Signals
		state := b.State
		why := b.Reason
		if b.Throttled {
			state += "+THROTTLED"
			why = b.ThrottledWhy + "; " + why
		}
		if b.RetryAt != nil {
			if b.RetryAt.After(now) {
				why += fmt.Sprintf(" (retried in %s)", age(*b.RetryAt, now))
			} else {
				why += " (retry due)"
			}
		}
		if s.Stale {
			why += fmt.Sprintf(" [signals %s old]", time.Duration(s.Age).Round(time.Second))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%s\t%.1f%%\t%s\t%s\t%s\t%s\n", n, state, age(now, b.Since),
			s.Requests, time.Duration(s.Window).Round(time.Second), 100*s.ErrorRate,
			dur(time.Duration(s.P95)), dur(time.Duration(s.TTFT)), rateText(s.TokensPerSecond), why)
	}
	tw.Flush()
	routes := make([]string, 0, len(v.Routes))
	for n := range v.Routes {
		routes = append(routes, n)
	}
	sort.Strings(routes)
	fmt.Fprintln(tw, "\nROUTE\tHEALTHY SHARE\tSHEDS\tWHY")
	for _, n := range routes {
		r := v.Routes[n]
		sheds := "nothing"
		switch r.Shed {
		case healthview.Sheddable:
			sheds = "sheddable"
		case healthview.Standard:
			sheds = "standard, sheddable"
		}
		fmt.Fprintf(tw, "%s\t%.2f\t%s\t%s\n", n, r.HealthyShare, sheds, r.Reason)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nfirst-token deadline: %s (%s)\n", time.Duration(v.FirstTokenTimeout), v.FirstTokenWhy)
	if v.ResponseWhy != "" {
		fmt.Fprintf(w, "response deadline: %s\n", v.ResponseWhy)
	}
	for _, n := range names {
		for _, e := range v.Backends[n].EndpointsOut {
			fmt.Fprintf(w, "endpoint out: %s %s for %s: %s\n", n, e.Endpoint, age(e.Until, now), e.Reason)
		}
	}
	if !verbose {
		return
	}
	for _, n := range names {
		b := v.Backends[n]
		fmt.Fprintf(w, "\n%s\n", n)
		for _, s := range b.Settings {
			fmt.Fprintf(w, "  %-20s %-18s %s\n", s.Name, s.Value, s.Why)
		}
		for _, t := range b.Transitions {
			fmt.Fprintf(w, "  %s  %s → %s: %s\n", t.At.Local().Format("15:04:05"), t.From, t.To, t.Reason)
		}
		for _, p := range b.Probes {
			res := "ok"
			if !p.OK {
				res = "FAILED: " + p.Reason
			}
			fmt.Fprintf(w, "  probe %s %s %s\n", p.At.Local().Format("15:04:05"), p.Name, res)
		}
	}
}

func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String()
}

func dur(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}

func rateText(r float64) string {
	if r == 0 {
		return "-"
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", r), ".0")
}
