package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

const maxAdminBody = 64 << 10

// handleAdmin serves the admin listener:
//
//	GET|POST|DELETE /_sim/faults   current global fault / replace it / clear it
//	GET|DELETE      /_sim/stats    counters / reset counters and the request ring
//	GET             /_sim/requests last request records (?limit=N)
//	GET             /_sim/health   liveness and whether the serving listener is open
func (s *Server) handleAdmin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(HeaderName, s.cfg.Name)
	allow := func(methods string) bool {
		for m := range splitComma(methods) {
			if r.Method == m {
				return true
			}
		}
		w.Header().Set("Allow", methods)
		writeError(w, &apiError{status: http.StatusMethodNotAllowed, Type: "invalid_request_error",
			Message: fmt.Sprintf("Method %s is not allowed for %s; use %s.", r.Method, r.URL.Path, methods)})
		return false
	}
	switch r.URL.Path {
	case "/_sim/faults":
		if !allow("GET, POST, DELETE") {
			return
		}
		switch r.Method {
		case http.MethodPost:
			f, e := decodeFault(r.Body)
			if e != nil {
				writeError(w, e)
				return
			}
			if err := s.setFault(f); err != nil {
				writeError(w, &apiError{status: http.StatusInternalServerError, Type: "server_error", Message: err.Error()})
				return
			}
		case http.MethodDelete:
			if err := s.setFault(Fault{}); err != nil {
				writeError(w, &apiError{status: http.StatusInternalServerError, Type: "server_error", Message: err.Error()})
				return
			}
		}
		writeJSON(w, http.StatusOK, s.Fault())
	case "/_sim/stats":
		if !allow("GET, DELETE") {
			return
		}
		if r.Method == http.MethodDelete {
			s.ResetStats()
		}
		writeJSON(w, http.StatusOK, s.Stats())
	case "/_sim/requests":
		if !allow("GET") {
			return
		}
		limit := 0
		if v := r.URL.Query().Get("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				writeError(w, invalidParam("limit", "invalid_value", fmt.Sprintf("Invalid limit %q: expected a non-negative integer (0 = all).", v)))
				return
			}
			limit = n
		}
		writeJSON(w, http.StatusOK, s.Requests(limit))
	case "/_sim/health":
		if !allow("GET") {
			return
		}
		s.mu.Lock()
		listening := s.cur != nil
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]any{
			"status": "ok", "name": s.cfg.Name, "addr": s.Addr(), "admin_addr": s.AdminAddr(), "listening": listening,
		})
	default:
		writeError(w, &apiError{status: http.StatusNotFound, Type: "invalid_request_error",
			Message: fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path)})
	}
}

// decodeFault reads a Fault strictly: unknown fields, trailing data and
// out-of-range values are errors.
func decodeFault(body io.Reader) (Fault, *apiError) {
	var f Fault
	dec := json.NewDecoder(io.LimitReader(body, maxAdminBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return f, invalidRequest("empty body: expected a fault JSON object such as {\"status\":503}")
		}
		return f, invalidRequest("invalid fault JSON: " + err.Error())
	}
	if dec.Decode(&struct{}{}) != io.EOF {
		return f, invalidRequest("invalid fault JSON: unexpected data after the object")
	}
	if err := f.Validate(); err != nil {
		return f, invalidRequest("invalid fault: " + err.Error())
	}
	return f, nil
}
