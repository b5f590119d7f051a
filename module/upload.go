package caddyzmq

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// Mongrel2's temp-file upload mode: a body over upload_threshold is not sent
// inline. The handler gets a first message whose header
// x-mongrel2-upload-start names a temporary file, while Caddy writes the
// body there, then a second message with both x-mongrel2-upload-start and
// x-mongrel2-upload-done naming it once the body is complete. Both have
// empty bodies and the same connection id; content-length is the size of
// the upload. A handler may answer the first message to refuse the upload,
// and Caddy stops writing. Caddy removes the file once the exchange is over.

const (
	hdrUploadStart = "x-mongrel2-upload-start"
	hdrUploadDone  = "x-mongrel2-upload-done"
)

// uploadSpool is one request body on its way to a temporary file.
type uploadSpool struct {
	f    *os.File
	path string
	size int64
	done bool
}

// needsSpool reports whether r's body goes through a temporary file.
func (h *Handler) needsSpool(r *http.Request) bool {
	if h.UploadTempStore == "" || r.Body == nil || r.Body == http.NoBody {
		return false
	}
	return r.ContentLength < 0 || r.ContentLength > h.UploadThreshold
}

// newUploadSpool creates the file from a Mongrel2-style pattern such as
// /tmp/upload.XXXXXX (the X's are replaced) or a plain directory.
func newUploadSpool(pattern string) (*uploadSpool, error) {
	dir, base := filepath.Split(pattern)
	if base == "" {
		base = "caddy-zmq-upload.XXXXXX"
	}
	base = strings.TrimRight(base, "X") + "*"
	f, err := os.CreateTemp(dir, base)
	if err != nil {
		return nil, fmt.Errorf("creating upload file: %w", err)
	}
	return &uploadSpool{f: f, path: f.Name()}, nil
}

var errUploadTooLarge = errors.New("request body exceeds max_request_body")

// spool copies (more of) the body to the file. It returns after each chunk
// when stop reports true, so that a handler's early answer ends the upload.
func (u *uploadSpool) spool(r *http.Request, limit int64, buf []byte, stop func() bool) (stopped bool, err error) {
	for !u.done {
		n, rerr := r.Body.Read(buf)
		if n > 0 {
			if u.size+int64(n) > limit {
				return false, errUploadTooLarge
			}
			if _, err := u.f.Write(buf[:n]); err != nil {
				return false, fmt.Errorf("writing upload file: %w", err)
			}
			u.size += int64(n)
		}
		if rerr == io.EOF {
			u.done = true
			if err := u.f.Sync(); err != nil {
				return false, fmt.Errorf("writing upload file: %w", err)
			}
			break
		}
		if rerr != nil {
			var mbe *http.MaxBytesError
			if errors.As(rerr, &mbe) {
				return false, errUploadTooLarge
			}
			return false, fmt.Errorf("reading request body: %w", rerr)
		}
		if stop() {
			return true, nil
		}
	}
	return false, nil
}

func (u *uploadSpool) remove() {
	u.f.Close()
	os.Remove(u.path)
}
