package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/<pid>/stat (USER_HZ,
// 100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// Processes whose CPU time is accounted per request.
const (
	procLoadgen  = "load generator"
	procEnvoy    = "Envoy"
	procExtProc  = "detour extproc"
	procProvider = "provider (sim)"
)

var cpuProcs = []string{procLoadgen, procEnvoy, procExtProc, procProvider}

// cpuSnapshot is the CPU time (user + system) used so far by each process.
type cpuSnapshot map[string]time.Duration

// takeCPU reads the CPU time of each named pid. Processes that cannot be
// read are left out.
func takeCPU(pids map[string]int) cpuSnapshot {
	s := cpuSnapshot{}
	for name, pid := range pids {
		if d, err := processCPU(pid); err == nil {
			s[name] = d
		}
	}
	return s
}

// processCPU is utime + stime of a process, from /proc/<pid>/stat.
func processCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(data))
}

// parseStatCPU extracts utime + stime (fields 14 and 15) from a
// /proc/<pid>/stat line. The command name (field 2) may contain spaces and
// parentheses, so fields are counted from its closing parenthesis.
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat line %.40q", stat)
	}
	f := strings.Fields(stat[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("short stat line %.40q", stat)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat line: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}

// perRequest is the CPU each process used between two snapshots, divided
// by n requests.
func perRequest(before, after cpuSnapshot, n int) map[string]time.Duration {
	out := map[string]time.Duration{}
	if n <= 0 {
		return out
	}
	for name, a := range after {
		if b, ok := before[name]; ok {
			out[name] = (a - b) / time.Duration(n)
		}
	}
	return out
}
