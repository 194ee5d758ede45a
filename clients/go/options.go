package entitlements

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// serviceName is the fully qualified gRPC service the retry policy applies to.
const serviceName = "entitlements.v1.EntitlementService"

// DefaultTimeout is the deadline of a unary call whose context has none (see WithTimeout).
const DefaultTimeout = 5 * time.Second

// maxAttempts is grpc-go's cap on retryPolicy.maxAttempts (grpc.WithMaxCallAttempts defaults to 5 and the
// gRPC retry design caps it there); refusing more is clearer than a silent clamp.
const maxAttempts = 5

// An Option configures a Client; pass options to New. A later option overrides an earlier one of the same kind.
type Option func(*settings) error

// settings is what the options build; New turns it into dial options.
type settings struct {
	apiKey      string
	projectID   int64
	timeout     time.Duration
	creds       credentials.TransportCredentials
	retry       RetryPolicy
	dialOptions []grpc.DialOption
}

func defaultSettings() settings {
	return settings{
		timeout: DefaultTimeout,
		// TLS with the system's roots: a client of a service that moves money should not send its API key in
		// clear unless told to (WithInsecure).
		creds: credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12}),
		retry: DefaultRetryPolicy(),
	}
}

// WithAPIKey sends key as `authorization: Bearer <key>` with every call. Keys have a `read` and/or `write`
// scope; without a key every call fails with codes.Unauthenticated.
func WithAPIKey(key string) Option {
	return func(s *settings) error {
		if strings.ContainsAny(key, "\r\n") {
			return errors.New("entitlements: the API key must not contain line breaks")
		}
		s.apiKey = key
		return nil
	}
}

// WithProjectID sets the Xsolla project of every request whose ProjectId is 0. With both at 0 the service
// decides: the project the API key is bound to when it is bound to exactly one, else its default project.
func WithProjectID(projectID int64) Option {
	return func(s *settings) error {
		if projectID < 0 {
			return fmt.Errorf("entitlements: project id %d is negative", projectID)
		}
		s.projectID = projectID
		return nil
	}
}

// WithTimeout sets the deadline of each unary call whose context carries none (default DefaultTimeout, 5 s).
// A context with its own deadline keeps it. 0 disables the default: calls then wait as long as their
// context allows. GetOrderStatus and FollowOrder never get this deadline: the server ends the stream after
// max_wait.
func WithTimeout(d time.Duration) Option {
	return func(s *settings) error {
		if d < 0 {
			return fmt.Errorf("entitlements: timeout %v is negative", d)
		}
		s.timeout = d
		return nil
	}
}

// WithTLS connects over TLS configured by cfg (nil: the system's roots). Set cfg.Certificates for mTLS and
// cfg.ServerName to verify the server's certificate against another name than the target's host.
// TLS with the system's roots is the default.
func WithTLS(cfg *tls.Config) Option {
	return func(s *settings) error {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		s.creds = credentials.NewTLS(cfg)
		return nil
	}
}

// WithTLSFiles connects over TLS using PEM files: caFile verifies the server ("" for the system's roots);
// certFile and keyFile, given together, are the client's certificate for mTLS ("" for none); serverName, when
// not "", is the name the server's certificate must carry (e.g. when the target is an IP address).
func WithTLSFiles(caFile, certFile, keyFile, serverName string) Option {
	return func(s *settings) error {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("entitlements: CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("entitlements: CA file %s holds no PEM certificate", caFile)
			}
			cfg.RootCAs = pool
		}
		if (certFile == "") != (keyFile == "") {
			return errors.New("entitlements: the client certificate and key files must be given together (mTLS)")
		}
		if certFile != "" {
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return fmt.Errorf("entitlements: client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		s.creds = credentials.NewTLS(cfg)
		return nil
	}
}

// WithInsecure connects in plaintext. The API key then travels in clear: use it only on a trusted network,
// to a local sidecar that terminates TLS, or in development.
func WithInsecure() Option {
	return func(s *settings) error {
		s.creds = insecure.NewCredentials()
		return nil
	}
}

// WithRetry replaces the retry policy (default DefaultRetryPolicy()). RetryPolicy{MaxAttempts: 1} turns
// gRPC's retries off.
func WithRetry(p RetryPolicy) Option {
	return func(s *settings) error {
		if err := p.validate(); err != nil {
			return err
		}
		s.retry = p
		return nil
	}
}

// WithDialOptions adds grpc-go dial options after the client's own, so they override them (e.g.
// grpc.WithContextDialer in tests, grpc.WithUserAgent, interceptors for tracing).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) error {
		s.dialOptions = append(s.dialOptions, opts...)
		return nil
	}
}

// RetryPolicy says which failed calls gRPC retries by itself and how long it waits between attempts.
//
// It becomes the channel's gRPC service config (`retryPolicy` for every method of the service), so grpc-go
// retries inside the channel, within the call's deadline: before attempt n it waits a random time up to
// min(InitialBackoff * BackoffMultiplier^(n-2), MaxBackoff). A retry resends the very request bytes of the
// first attempt, so a Grant or Revoke keeps its idempotency key and the server applies it once. gRPC only
// retries a call whose response has not started: a stream that delivered a message is never replayed (that
// is what FollowOrder is for).
//
// FollowOrder uses InitialBackoff and MaxBackoff for its own waits between reopenings.
type RetryPolicy struct {
	// Attempts in all, the first included: 1..5. 1 means no retries.
	MaxAttempts int
	// Upper bound of the first wait; > 0.
	InitialBackoff time.Duration
	// Upper bound of any wait; > 0.
	MaxBackoff time.Duration
	// How much the bound grows per attempt; > 0. 0 means 2.
	BackoffMultiplier float64
	// The status codes that are retried; not empty when MaxAttempts > 1. The default retries only
	// codes.Unavailable, which the service returns when its store could not be reached and nothing was written.
	RetryableCodes []codes.Code
}

// DefaultRetryPolicy returns the policy a client has unless WithRetry says otherwise: 5 attempts, waits from
// 100 ms doubling up to 2 s, for codes.Unavailable only.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{
		MaxAttempts:       maxAttempts,
		InitialBackoff:    100 * time.Millisecond,
		MaxBackoff:        2 * time.Second,
		BackoffMultiplier: 2,
		RetryableCodes:    []codes.Code{codes.Unavailable},
	}
}

func (p RetryPolicy) multiplier() float64 {
	if p.BackoffMultiplier == 0 {
		return 2
	}
	return p.BackoffMultiplier
}

func (p RetryPolicy) validate() error {
	switch {
	case p.MaxAttempts < 1 || p.MaxAttempts > maxAttempts:
		return fmt.Errorf("entitlements: RetryPolicy.MaxAttempts %d is not in 1..%d (gRPC's limit)",
			p.MaxAttempts, maxAttempts)
	case p.InitialBackoff <= 0 || p.MaxBackoff <= 0:
		return errors.New("entitlements: RetryPolicy.InitialBackoff and MaxBackoff must be > 0")
	case p.BackoffMultiplier < 0:
		return errors.New("entitlements: RetryPolicy.BackoffMultiplier must be > 0")
	case p.MaxAttempts > 1 && len(p.RetryableCodes) == 0:
		return errors.New("entitlements: RetryPolicy.RetryableCodes must not be empty")
	}
	for _, c := range p.RetryableCodes {
		if _, ok := codeNames[c]; !ok || c == codes.OK {
			return fmt.Errorf("entitlements: RetryPolicy.RetryableCodes: %v is not an error code", c)
		}
	}
	return nil
}

// serviceConfig returns the gRPC service config (JSON) that applies the policy to every method of the
// service; "" when it retries nothing.
func (p RetryPolicy) serviceConfig() string {
	if p.MaxAttempts <= 1 {
		return ""
	}
	names := make([]string, len(p.RetryableCodes))
	for i, c := range p.RetryableCodes {
		names[i] = codeNames[c]
	}
	config := map[string]any{
		"methodConfig": []any{map[string]any{
			"name": []any{map[string]string{"service": serviceName}},
			"retryPolicy": map[string]any{
				"maxAttempts":          p.MaxAttempts,
				"initialBackoff":       durationJSON(p.InitialBackoff),
				"maxBackoff":           durationJSON(p.MaxBackoff),
				"backoffMultiplier":    p.multiplier(),
				"retryableStatusCodes": names,
			},
		}},
	}
	out, err := json.Marshal(config)
	if err != nil {
		panic(err) // only strings, numbers and slices: cannot fail
	}
	return string(out)
}

// durationJSON writes d as a service-config duration: decimal seconds with an "s" suffix.
func durationJSON(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

// keepaliveParams finds a dead connection (a server that vanished, a NAT or load balancer that dropped the
// flow) during long GetOrderStatus streams, which may sit silent for up to an hour. Five minutes is the
// shortest interval a gRPC server accepts by default: pinging more often makes it close the connection with
// "too_many_pings". No pings while no call is open, for the same reason; unary calls have their deadline.
var keepaliveParams = keepalive.ClientParameters{
	Time:                5 * time.Minute,
	Timeout:             20 * time.Second,
	PermitWithoutStream: false,
}

// apiKeyCredentials sends the API key with every call.
type apiKeyCredentials struct{ header string }

func (c apiKeyCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": c.header}, nil
}

// RequireTransportSecurity is false: development servers and TLS-terminating sidecars listen in plaintext,
// and WithInsecure is an explicit choice.
func (apiKeyCredentials) RequireTransportSecurity() bool { return false }

func (s *settings) dialOptionList() []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(s.creds),
		grpc.WithKeepaliveParams(keepaliveParams),
	}
	if config := s.retry.serviceConfig(); config != "" {
		opts = append(opts, grpc.WithDefaultServiceConfig(config))
	} else {
		opts = append(opts, grpc.WithDisableRetry())
	}
	if s.apiKey != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(apiKeyCredentials{header: "Bearer " + s.apiKey}))
	}
	return append(opts, s.dialOptions...)
}
