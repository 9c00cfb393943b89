package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/detourhq/detour/envoy"
	"github.com/detourhq/detour/examples"
	"github.com/detourhq/detour/policy"
)

// writeCA writes a self-signed CA certificate in PEM to dir and returns
// its path: Envoy reads ca_file while validating.
func writeCA(t *testing.T, dir string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "detour test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestStaticBootstrapEnvoyValidates hands the generated bootstrap to the
// real Envoy in validate mode. Without an Envoy binary it fails: set
// ENVOY_BIN or run `make envoy`.
func TestStaticBootstrapEnvoyValidates(t *testing.T) {
	bin, err := envoy.Locate("")
	if err != nil {
		t.Fatalf("cannot validate the bootstrap without Envoy: %v", err)
	}
	dir := t.TempDir()
	ca := writeCA(t, dir)
	// tlsPolicy plus a CA bundle on one backend.
	withCA := strings.Replace(tlsPolicy, "tls: {}", "tls: {ca_file: "+ca+"}", 1)
	if withCA == tlsPolicy {
		t.Fatal("test policy has no tls: {} to extend")
	}
	for _, tt := range []struct {
		name string
		src  string
	}{
		{"quickstart", string(examples.QuickstartPolicy)},
		{"tls hostnames fail open", withCA},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := parsePolicy(t, tt.src)
			b, err := StaticBootstrap(p)
			if err != nil {
				t.Fatalf("StaticBootstrap: %v", err)
			}
			out, err := MarshalBootstrap(b)
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(out) {
				t.Fatalf("bootstrap is not valid JSON:\n%s", out)
			}
			// The JSON reads back as the same bootstrap.
			var back bootstrapv3.Bootstrap
			if err := protojson.Unmarshal(out, &back); err != nil {
				t.Fatalf("read back: %v", err)
			}
			if !proto.Equal(&back, b) {
				t.Error("bootstrap JSON does not read back as the same bootstrap")
			}
			checkBootstrap(t, b, p)

			path := filepath.Join(t.TempDir(), "envoy.json")
			if err := os.WriteFile(path, out, 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := envoy.Validate(ctx, bin, path); err != nil {
				t.Fatalf("Envoy %s rejects the bootstrap: %v", bin, err)
			}
		})
	}
}

func checkBootstrap(t *testing.T, b *bootstrapv3.Bootstrap, p *policy.Policy) {
	t.Helper()
	sr := b.GetStaticResources()
	res := mustBuild(t, p)
	if len(sr.Listeners) != len(res.Listeners) || len(sr.Clusters) != len(res.Clusters) {
		t.Fatalf("bootstrap has %d listeners and %d clusters; Build has %d and %d",
			len(sr.Listeners), len(sr.Clusters), len(res.Listeners), len(res.Clusters))
	}
	for i := range sr.Listeners {
		if !proto.Equal(sr.Listeners[i], res.Listeners[i]) {
			t.Errorf("listener %d differs from Build's", i)
		}
	}
	for i := range sr.Clusters {
		if !proto.Equal(sr.Clusters[i], res.Clusters[i]) {
			t.Errorf("cluster %s differs from Build's", sr.Clusters[i].Name)
		}
	}
	admin := b.GetAdmin().GetAddress().GetSocketAddress()
	host, port, _ := splitHostPort(p.Envoy.Admin)
	if admin.GetAddress() != host || admin.GetPortValue() != port {
		t.Errorf("admin %v, want %s", admin, p.Envoy.Admin)
	}
}

func TestStaticBootstrapBadAdmin(t *testing.T) {
	p := quickstart(t)
	p.Envoy.Admin = "localhost"
	if _, err := StaticBootstrap(p); err == nil || !strings.Contains(err.Error(), "envoy.admin") {
		t.Errorf("bad admin address: %v", err)
	}
}
