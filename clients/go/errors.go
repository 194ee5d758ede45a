package entitlements

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is the error of every failed call: the gRPC status code the call ended with and the server's message.
// Use errors.As to get it, or the predicates below (IsRetryable, IsInvalidArgument, ...), which look through
// wrapping.
//
//	codes.InvalidArgument     IsInvalidArgument   a field is missing or out of range; the message names it
//	codes.Unauthenticated     IsUnauthenticated   no API key, or one the service does not know
//	codes.PermissionDenied    IsPermissionDenied  the key lacks the read/write scope or the request's project
//	codes.NotFound            IsNotFound          e.g. Xsolla does not know the order
//	codes.AlreadyExists       IsConflict          an idempotency key reused with a different request
//	codes.FailedPrecondition  IsConflict          e.g. a sku granted as another kind than it is held
//	codes.Unavailable         IsRetryable         the service or its store could not be reached; nothing written
//	codes.DeadlineExceeded    IsRetryable         the deadline passed first; a write may have applied or not
//	codes.ResourceExhausted   IsRetryable         a quota or stream limit was hit
//
// A retryable error means the same call, with the same idempotency key, may succeed later: the client has
// already retried it by its RetryPolicy. Error implements GRPCStatus, so status.FromError and status.Code
// work on it (and on errors that wrap it); a canceled or timed-out call also matches context.Canceled or
// context.DeadlineExceeded with errors.Is.
type Error struct {
	// Code is the status code the call ended with.
	Code codes.Code
	// Message is the server's message, unchanged ("" when it sent none); for INVALID_ARGUMENT it names the field.
	Message string

	status *status.Status
	cause  error
}

// Error returns "entitlements: <Code>: <Message>".
func (e *Error) Error() string {
	return fmt.Sprintf("entitlements: %s: %s", codeName(e.Code), e.Message)
}

// Unwrap returns what grpc-go returned: the status error, possibly wrapped (e.g. "max retries exhausted").
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus returns the status the call ended with, details included.
func (e *Error) GRPCStatus() *status.Status {
	if e.status == nil {
		return status.New(e.Code, e.Message)
	}
	return e.status
}

// Is reports whether target is context.Canceled or context.DeadlineExceeded and the call ended with the
// matching code, so errors.Is(err, context.DeadlineExceeded) works on calls as on anything else with a context.
func (e *Error) Is(target error) bool {
	switch target {
	case context.Canceled:
		return e.Code == codes.Canceled
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	}
	return false
}

// CodeName returns the code's canonical name, as the .proto and the other clients write it
// ("INVALID_ARGUMENT", "UNAVAILABLE"): for logs and metrics labels shared across languages.
func (e *Error) CodeName() string { return codeName(e.Code) }

// Retryable reports whether calling again with the same idempotency key may succeed: UNAVAILABLE,
// DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED.
func (e *Error) Retryable() bool {
	switch e.Code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		return true
	}
	return false
}

// IsRetryable reports whether err is an *Error that is worth retrying later with the same idempotency key.
func IsRetryable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Retryable()
}

// IsInvalidArgument reports whether err is an *Error with codes.InvalidArgument: fix the request.
func IsInvalidArgument(err error) bool { return hasCode(err, codes.InvalidArgument) }

// IsUnauthenticated reports whether err is an *Error with codes.Unauthenticated: no or unknown API key
// (or, for GetOrderStatus, an order token Xsolla rejected).
func IsUnauthenticated(err error) bool { return hasCode(err, codes.Unauthenticated) }

// IsPermissionDenied reports whether err is an *Error with codes.PermissionDenied: the API key lacks the
// scope the RPC needs or is not bound to the request's project.
func IsPermissionDenied(err error) bool { return hasCode(err, codes.PermissionDenied) }

// IsNotFound reports whether err is an *Error with codes.NotFound.
func IsNotFound(err error) bool { return hasCode(err, codes.NotFound) }

// IsConflict reports whether err is an *Error with codes.AlreadyExists (an idempotency key reused with a
// different request) or codes.FailedPrecondition (the request cannot apply to what is stored). Retrying the
// same call will not help.
func IsConflict(err error) bool {
	return hasCode(err, codes.AlreadyExists) || hasCode(err, codes.FailedPrecondition)
}

func hasCode(err error, code codes.Code) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// translate turns what grpc-go returned into an *Error (nil stays nil).
func translate(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	// errors.As rather than status.FromError: grpc-go wraps the status of a call whose retries ran out
	// ("max retries exhausted: ...: %w"), and status.FromError would put that whole text in the message;
	// the server's own message is what callers compare and show.
	var withStatus interface{ GRPCStatus() *status.Status }
	if errors.As(err, &withStatus) {
		if st := withStatus.GRPCStatus(); st != nil {
			return &Error{Code: st.Code(), Message: st.Message(), status: st, cause: err}
		}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		st := status.FromContextError(err)
		return &Error{Code: st.Code(), Message: st.Message(), status: st, cause: err}
	}
	return &Error{Code: codes.Unknown, Message: err.Error(), cause: err}
}

func codeName(c codes.Code) string {
	if name, ok := codeNames[c]; ok {
		return name
	}
	return c.String() // a code this version does not know: "Code(42)"
}

var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}
