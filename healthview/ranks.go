package healthview

// Ranks is a view turned into what one router needs, computed once per
// view: the rank of each backend by the router's own index, and whether
// any request needs more than a sort.
type Ranks struct {
	// Rank by backend index: Rank of the backend's state, and 1 for a
	// throttled HEALTHY backend (full: after the backends with room).
	Rank []uint8
	// Any: some backend is not HEALTHY or is throttled.
	Any bool
	// Trial: some backend takes trial requests (DEGRADED or HALF_OPEN).
	Trial bool
	// TrialEvery: one request in this many is a trial (1/TrialShare,
	// rounded; 20 when the view does not say).
	TrialEvery uint64
}

// RanksFor ranks n backends, the ith named name(i). Backends the view does
// not know rank as HEALTHY.
func (s *Snapshot) RanksFor(n int, name func(i int) string) Ranks {
	r := Ranks{Rank: make([]uint8, n), TrialEvery: 20}
	if s.TrialShare > 0 {
		r.TrialEvery = max(1, uint64(1/s.TrialShare+0.5))
	}
	for i := range n {
		b, ok := s.Backends[name(i)]
		if !ok {
			continue
		}
		rk := Rank(b.State)
		if b.Throttled && rk == 0 {
			rk = 1
		}
		r.Rank[i] = rk
		r.Any = r.Any || rk != 0
		// Ranks 1 (degraded) and 2 (recovering) take trial requests;
		// OPEN waits for its cool-down.
		r.Trial = r.Trial || rk == 1 || rk == 2
	}
	return r
}

// Low reports whether the backend of index i ranks below HEALTHY (an
// index past Rank, a backend the view does not know, does not).
func (r *Ranks) Low(i int) bool { return i >= 0 && i < len(r.Rank) && r.Rank[i] > 0 }

// ValidPriority reports whether v names a priority; "" is none (the
// route's default applies).
func ValidPriority(v string) bool {
	switch v {
	case "", Critical, Standard, Sheddable:
		return true
	}
	return false
}
