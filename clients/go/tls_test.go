package entitlements_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	entitlements "github.com/xsolla-entitlements/entitlements/clients/go"
	v1 "github.com/xsolla-entitlements/entitlements/clients/go/gen/entitlements/v1"
)

// testPKI is a CA with a server certificate for "entitlements.test" and a client certificate, as PEM files.
type testPKI struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
	pool                                                 *x509.CertPool
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pki := testPKI{caFile: writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER), pool: x509.NewCertPool()}
	pki.pool.AddCert(ca)
	issue := func(name string, serial int64, usage x509.ExtKeyUsage, dnsNames []string) (string, string) {
		key := newKey(t)
		template := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: name},
			DNSNames:     dnsNames,
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		der, err := x509.CreateCertificate(rand.Reader, template, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(t, dir, name+".pem", "CERTIFICATE", der), writePEM(t, dir, name+".key", "EC PRIVATE KEY", keyDER)
	}
	pki.serverCert, pki.serverKey = issue("server", 2, x509.ExtKeyUsageServerAuth, []string{"entitlements.test"})
	pki.clientCert, pki.clientKey = issue("client", 3, x509.ExtKeyUsageClientAuth, nil)
	return pki
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func writePEM(t *testing.T, dir, name, kind string, der []byte) string {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestMutualTLS: WithTLSFiles verifies the server against the CA under the name given and presents the client
// certificate; without the certificate, or in plaintext, the server refuses the call.
func TestMutualTLS(t *testing.T) {
	pki := newTestPKI(t)
	serverPair, err := tls.LoadX509KeyPair(pki.serverCert, pki.serverKey)
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{serverPair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pki.pool,
		MinVersion:   tls.VersionTLS12,
	})
	f := &fakeService{}
	addr := serve(t, f, grpc.Creds(creds))
	req := &v1.CheckEntitlementRequest{UserId: "u", Sku: "s"}
	ctx := context.Background()

	mtls := newClient(t, addr, entitlements.WithAPIKey("k"),
		entitlements.WithTLSFiles(pki.caFile, pki.clientCert, pki.clientKey, "entitlements.test"))
	if _, err := mtls.CheckEntitlement(ctx, req); err != nil {
		t.Fatalf("mTLS call: %v", err)
	}
	if got := f.authHeaders(); len(got) != 1 || got[0] != "Bearer k" {
		t.Fatalf("authorization over TLS = %q", got)
	}

	refused := map[string]entitlements.Option{
		"no client certificate": entitlements.WithTLSFiles(pki.caFile, "", "", "entitlements.test"),
		"wrong server name":     entitlements.WithTLSFiles(pki.caFile, pki.clientCert, pki.clientKey, "other.test"),
		"system roots":          entitlements.WithTLSFiles("", pki.clientCert, pki.clientKey, "entitlements.test"),
		"plaintext":             entitlements.WithInsecure(),
	}
	for name, opt := range refused {
		client := newClient(t, addr, opt, entitlements.WithTimeout(2*time.Second))
		if _, err := client.CheckEntitlement(ctx, req); err == nil {
			t.Errorf("%s: the call succeeded", name)
		}
	}
	if n := len(f.calls()); n != 1 {
		t.Fatalf("%d calls reached the service, want 1", n)
	}
}

// TestDefaultIsTLS: without WithInsecure the client speaks TLS, so a plaintext server is not reached.
func TestDefaultIsTLS(t *testing.T) {
	f := &fakeService{}
	addr := serve(t, f)
	client, err := entitlements.New(addr, entitlements.WithTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.CheckEntitlement(context.Background(), &v1.CheckEntitlementRequest{}); err == nil {
		t.Fatal("a TLS client reached a plaintext server")
	}
	if len(f.calls()) != 0 {
		t.Fatal("the call reached the service")
	}
}
