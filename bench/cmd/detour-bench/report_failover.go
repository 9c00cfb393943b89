package main

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/detourhq/detour/bench/loadgen"
	"github.com/detourhq/detour/xds"
)

// Failover targets.
const (
	targetFailoverFailed = 0
	targetShift          = time.Second
	targetReloadP99      = time.Second
)

// strictVerdict says whether measured < target and by how much.
func strictVerdict(measured, target time.Duration, unit func(time.Duration) string) string {
	if measured < target {
		return fmt.Sprintf("**met**, %s under the target", unit(target-measured))
	}
	return fmt.Sprintf("**missed** by %s (%.1f× the target)", unit(measured-target), float64(measured)/float64(target))
}

// fmtTarget formats a target duration: whole seconds as "1 s", else ms.
func fmtTarget(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%d s", d/time.Second)
	}
	return fmtMsUnit(d)
}

// fmtShift is the shift time, or "never".
func fmtShift(f failoverFigures) string {
	if !f.Shifted {
		return "never"
	}
	return fmtMs(f.Shift) + " ms"
}

// writeFailoverTargets adds the failover rows to the targets table.
func (r *report) writeFailoverTargets(b *bytes.Buffer) {
	if r.Failover == nil {
		if r.FailoverErr != "" {
			b.WriteString("| failover and policy edits | – | **not measured**: the run failed (see section 4) |\n")
		}
		return
	}
	fo := r.Failover
	det, okD := fo.side(sideDetour)
	base, okB := fo.side(sideBaseline)
	if okD {
		vs := ""
		if okB {
			vs = fmt.Sprintf(" (baseline: %d)", base.Figures.Failed)
		}
		v := "**met**"
		if det.Figures.Failed > targetFailoverFailed {
			v = fmt.Sprintf("**missed**: %s", fmtFailedBy(det.Figures))
		}
		fmt.Fprintf(b, "| failover, a provider answers 503 while another is healthy: failed client requests = %d | %d of %d%s | %s |\n",
			targetFailoverFailed, det.Figures.Failed, det.Figures.Scheduled, vs, v)
		vs = ""
		if okB {
			vs = fmt.Sprintf(" (baseline: %s)", fmtShift(base.Figures))
		}
		v = "**missed**: not reached"
		if f := det.Figures; f.After > 0 {
			v = fmt.Sprintf("**missed**: not reached; %.1f %% of the requests after the fault were served by %s",
				100*float64(f.ServedAfter[secondaryName])/float64(f.After), secondaryName)
		}
		if det.Figures.Shifted {
			v = strictVerdict(det.Figures.Shift, targetShift, fmtMsUnit)
		}
		fmt.Fprintf(b, "| failover: time until ≥ %.0f %% of requests are served by the fallback < %s | %s%s | %s |\n",
			100*shiftShare, fmtTarget(targetShift), fmtShift(det.Figures), vs, v)
	}
	switch {
	case fo.Reload != nil && len(fo.Reload.Edits) > 0 && fo.ReloadErr == "":
		s := fo.Reload.summary()
		fmt.Fprintf(b, "| policy edit → in force in Envoy, p99 < %s | %s ms (p50 %s, max %s; %d edits) | %s |\n",
			fmtTarget(targetReloadP99), fmtMs(s.both.P99), fmtMs(s.both.P50), fmtMs(s.both.Max), s.both.N,
			strictVerdict(s.both.P99, targetReloadP99, fmtMsUnit))
	case fo.ReloadErr != "":
		fmt.Fprintf(b, "| policy edit → in force in Envoy, p99 < %s | – | **failed** (see section 5) |\n", fmtTarget(targetReloadP99))
	}
}

func fmtFailedBy(f failoverFigures) string {
	var kinds []string
	for _, k := range slices.Sorted(maps.Keys(f.FailedBy)) {
		kinds = append(kinds, fmt.Sprintf("%s: %d", k, f.FailedBy[k]))
	}
	return strings.Join(kinds, ", ")
}

// writeFailover renders section 4.
func (r *report) writeFailover(b *bytes.Buffer) {
	fmt.Fprintf(b, "### 4. Failover: a provider starts failing\n\n")
	if r.Failover == nil {
		if r.FailoverErr == "" {
			b.WriteString("Not measured.\n\n")
			return
		}
		fmt.Fprintf(b, "**The failover run failed:**\n\n```\n%s\n```\n\n", r.FailoverErr)
		return
	}
	fo := r.Failover
	d := fo.Policy
	fmt.Fprintf(b, "Two `detour sim` processes serve the same model: `%s` (cheaper, so detour's first choice for `\"model\": \"auto\"`) and `%s`. "+
		"Open loop at %s req/s for %s, `POST %s` with a %d-byte chat body, non-streaming; %s into the run `%s` is told to answer every request with 503 "+
		"(`POST /_sim/faults {\"status\":503}` on its admin port) until the end. "+
		"The sides run one after the other in this run, in the order of the table, each through its own Envoy (`--concurrency %d`); "+
		"between them the fault is cleared and the providers' counters are reset.\n\n",
		primaryName, secondaryName, fmtRate(fo.Rate), fo.Duration, chatPath, fo.BodyBytes, fo.FaultAt, primaryName, envoyThreads)
	fmt.Fprintf(b, "- **detour:** `xds.StaticBootstrap` of the two-backend policy (what `detour bootstrap --static` prints), with `detour extproc` running: "+
		"per request the priority groups [%s, %s], a retry policy on `%s` and 429 (up to %d retries, back-off %s base / %s cap), "+
		"per backend cluster outlier detection (%d consecutive 5xx or gateway errors, %s sweeps, %s base ejection, panic threshold at Envoy's default) "+
		"and a %.0f %% retry budget, and the per-attempt ext_proc stage.\n",
		primaryName, secondaryName, strings.ReplaceAll(xds.RetryOn, ",", ", "), d.Retry.Attempts-1, d.Retry.BaseDelay.D(), d.Retry.MaxDelay.D(),
		d.OutlierDetection.ConsecutiveErrors, d.OutlierDetection.Interval.D(), d.OutlierDetection.BaseEjectionTime.D(), d.Retry.BudgetPercent)
	fmt.Fprintf(b, "- **baseline:** the same generated config with Envoy's defaults in place of detour's failover: the ext_proc filter and the per-attempt stage removed, "+
		"one plain route to the `%s` cluster by name with **no retry policy** (Envoy then retries nothing), and the clusters' **outlier detection and "+
		"circuit breakers deleted** (Envoy's defaults: no ejection, default thresholds). The `%s` cluster stays defined but nothing routes to it: "+
		"this is plain Envoy in front of one provider.\n\n", primaryName, secondaryName)

	sides := fo.Sides
	b.WriteString("| |")
	for _, s := range sides {
		fmt.Fprintf(b, " %s |", failoverSideLabel(s.Side))
	}
	b.WriteString("\n| --- |" + strings.Repeat(" ---: |", len(sides)) + "\n")
	row := func(label string, cell func(failoverSideResult) string) {
		b.WriteString("| " + label + " |")
		for _, s := range sides {
			b.WriteString(" " + cell(s) + " |")
		}
		b.WriteString("\n")
	}
	row("client requests scheduled / sent", func(s failoverSideResult) string {
		return fmt.Sprintf("%d / %d", s.Figures.Scheduled, s.Figures.Sent)
	})
	row("**failed client requests**", func(s failoverSideResult) string {
		if s.Figures.Failed == 0 {
			return "**0**"
		}
		return fmt.Sprintf("**%d** (%s)", s.Figures.Failed, fmtFailedBy(s.Figures))
	})
	row("… of which scheduled after the fault", func(s failoverSideResult) string {
		return fmt.Sprintf("%d of %d", s.Figures.FailedAfter, s.Figures.After)
	})
	row(fmt.Sprintf("answered 2xx after the fault by %s / %s", primaryName, secondaryName), func(s failoverSideResult) string {
		return fmt.Sprintf("%d / %d", s.Figures.ServedAfter[primaryName], s.Figures.ServedAfter[secondaryName])
	})
	row(fmt.Sprintf("share of the requests after the fault answered 2xx by %s", secondaryName), func(s failoverSideResult) string {
		if s.Figures.After == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f %%", 100*float64(s.Figures.ServedAfter[secondaryName])/float64(s.Figures.After))
	})
	row(fmt.Sprintf("**time from the fault until ≥ %.0f %% are served by %s**", 100*shiftShare, secondaryName), func(s failoverSideResult) string {
		return "**" + fmtShift(s.Figures) + "**"
	})
	row(fmt.Sprintf("upstream attempts, %s / %s (providers' counters)", primaryName, secondaryName), func(s failoverSideResult) string {
		return fmt.Sprintf("%d / %d", s.Upstream[primaryName], s.Upstream[secondaryName])
	})
	row("**extra upstream attempts** (attempts − client requests sent)", func(s failoverSideResult) string {
		x := s.extra()
		if s.Figures.After > 0 && x != 0 {
			return fmt.Sprintf("**%+d** (%.2f per request after the fault)", x, float64(x)/float64(s.Figures.After))
		}
		return fmt.Sprintf("**%+d**", x)
	})
	row("latency of 2xx answers before the fault, p50 / p99 ms", func(s failoverSideResult) string {
		return fmtP50P99(s.Figures.LatBefore)
	})
	row("latency of 2xx answers after the fault, p50 / p99 ms", func(s failoverSideResult) string {
		return fmtP50P99(s.Figures.LatAfter)
	})
	b.WriteString("\n")
	fmt.Fprintf(b, "Times are taken on the requests' scheduled send times, from the moment the fault was sent to `%s`'s admin API. "+
		"The shift time is the scheduled time of the first request from which on every %s window (sliding by one request) has ≥ %.0f %% "+
		"of its requests answered 2xx by `%s`; \"never\" means the last window still misses that. Latency is from the scheduled send time "+
		"to the end of the body. Upstream attempts are the providers' own request counters over the side's run.\n\n",
		primaryName, shiftWindow, 100*shiftShare, secondaryName)
	writeEnvoyCounters(b, sides)

	// Per second: who answered.
	b.WriteString("Requests by scheduled second, answered by " + primaryName + " / " + secondaryName + " / failed:\n\n| second |")
	for _, s := range sides {
		fmt.Fprintf(b, " %s |", s.Side)
	}
	b.WriteString("\n| ---: |" + strings.Repeat(" ---: |", len(sides)) + "\n")
	rows := 0
	for _, s := range sides {
		rows = max(rows, len(s.Timeline))
	}
	for i := range rows {
		mark := ""
		if fo.FaultAt >= time.Duration(i)*time.Second && fo.FaultAt < time.Duration(i+1)*time.Second {
			mark = " (fault)"
		}
		fmt.Fprintf(b, "| %d%s |", i, mark)
		for _, s := range sides {
			if i >= len(s.Timeline) {
				b.WriteString(" |")
				continue
			}
			t := s.Timeline[i]
			fmt.Fprintf(b, " %d / %d / %d |", t.Served[primaryName], t.Served[secondaryName], t.Failed)
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func fmtP50P99(s loadgen.Summary) string {
	if s.N == 0 {
		return "–"
	}
	return fmtMs(s.P50) + " / " + fmtMs(s.P99)
}

// writeReload renders section 5.
func (r *report) writeReload(b *bytes.Buffer) {
	fmt.Fprintf(b, "### 5. Policy edit → in force in Envoy\n\n")
	fo := r.Failover
	if fo == nil {
		b.WriteString("Not measured: the failover run failed (section 4).\n\n")
		return
	}
	if fo.Reload == nil {
		b.WriteString("Not measured (`-reload-edits 0`).\n\n")
		return
	}
	fmt.Fprintf(b, "`detour xds` and `detour extproc`, both following the policy file, and an Envoy started from `detour bootstrap` "+
		"(dynamic: listener, routes, clusters and endpoints over ADS). Each edit replaces the policy file (a new file renamed over it, as editors save) "+
		"with one that makes the other backend the cheaper one and lists it first; then, every %s, a request goes through that Envoy until one is "+
		"answered by the newly preferred backend (**traffic**: detour's ext_proc service reloaded), and Envoy's admin stat `%s` is read until it "+
		"changes (**routes**: the new route configuration arrived over xDS; listing the backend first reorders the route's priority groups, "+
		"while a price change alone changes no Envoy resource). **Both** is the later of the two. Times from the rename, in ms, "+
		"each an upper bound by up to %s plus one request; with %d edits the nearest-rank p99 is the largest.\n\n",
		reloadPoll, routesStat, reloadPoll, len(fo.Reload.Edits))
	if fo.ReloadErr != "" {
		fmt.Fprintf(b, "**The measurement failed** after %d edits:\n\n```\n%s\n```\n\n", len(fo.Reload.Edits), fo.ReloadErr)
	}
	if len(fo.Reload.Edits) == 0 {
		return
	}
	s := fo.Reload.summary()
	b.WriteString("| | p50 | p99 | max |\n| --- | ---: | ---: | ---: |\n")
	for _, x := range []struct {
		name string
		s    loadgen.Summary
	}{{"traffic follows", s.traffic}, {"Envoy has the new routes", s.routes}, {"**both**", s.both}} {
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", x.name, fmtMs(x.s.P50), fmtMs(x.s.P99), fmtMs(x.s.Max))
	}
	var all []string
	for _, e := range fo.Reload.Edits {
		all = append(all, fmt.Sprintf("%.0f", float64(e.both())/float64(time.Millisecond)))
	}
	fmt.Fprintf(b, "\nEvery edit (both, ms, in order): %s.\n\n", strings.Join(all, ", "))
}

// writeEnvoyCounters tabulates the Envoy counters that changed during
// either side's run.
func writeEnvoyCounters(b *bytes.Buffer, sides []failoverSideResult) {
	keys := map[string]bool{}
	for _, s := range sides {
		for k := range s.Envoy {
			keys[k] = true
		}
	}
	if len(keys) == 0 {
		return
	}
	b.WriteString("Envoy's own counters over each side's run (admin `/stats`, those that changed):\n\n| counter |")
	for _, s := range sides {
		fmt.Fprintf(b, " %s |", s.Side)
	}
	b.WriteString("\n| --- |" + strings.Repeat(" ---: |", len(sides)) + "\n")
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		fmt.Fprintf(b, "| `%s` |", k)
		for _, s := range sides {
			switch {
			case s.EnvoyErr != "":
				b.WriteString(" ? |")
			default:
				fmt.Fprintf(b, " %d |", s.Envoy[k])
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
	for _, s := range sides {
		var notes []string
		if n := s.Envoy["cluster."+primaryName+".upstream_rq_retry_overflow"]; n > 0 {
			notes = append(notes, fmt.Sprintf("`upstream_rq_retry_overflow` counts %d retries Envoy did not make because the retry budget "+
				"(a circuit breaker) was exhausted; each of those requests was answered with `%s`'s 503.", n, primaryName))
		}
		if n := s.Envoy["cluster."+primaryName+".lb_healthy_panic"]; n > 0 {
			notes = append(notes, fmt.Sprintf("`lb_healthy_panic` counts %d requests sent to `%s` although its only host was ejected "+
				"(panic mode: fewer hosts healthy than the panic threshold).", n, primaryName))
		}
		if len(notes) > 0 {
			fmt.Fprintf(b, "On the %s side, %s\n\n", s.Side, strings.Join(notes, " "))
		}
	}
}
