// Package hopbyhop says which HTTP header fields describe one connection
// rather than the message (RFC 9110 section 7.6.1), so that the front end
// passes neither the client's hop on to a worker nor a worker's hop on to
// the client. It is the one list both directions use.
package hopbyhop

import "golang.org/x/net/http/httpguts"

// fields are the header fields that are hop-by-hop by themselves, in
// canonical form: the list Caddy's reverse_proxy drops in both directions
// (the fields RFC 2616 section 13.5.1 named, plus Proxy-Connection, which
// libcurl still sends, and Alt-Svc, which advertises the front end's own
// protocols and so is Caddy's to send, not a worker's).
//
// Upgrade and Connection: upgrade go too: the front end does not pass
// protocol upgrades (WebSockets) to workers, so a worker must never see a
// request that looks like one it could take over.
var fields = [...]string{
	"Alt-Svc",
	"Connection",
	"Keep-Alive",
	"Proxy-Authenticate",
	"Proxy-Authorization",
	"Proxy-Connection",
	"Te",
	"Trailer",
	"Transfer-Encoding",
	"Upgrade",
}

// Fields returns the header fields that are hop-by-hop by themselves, in
// canonical form.
func Fields() []string { return append([]string(nil), fields[:]...) }

// Is reports whether the canonical header name is hop-by-hop by itself.
// Headers a message names in its Connection field are hop-by-hop too: see
// Nominated.
func Is(name string) bool {
	// A switch, not a map: it runs for every header of every request.
	switch name {
	case "Alt-Svc", "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// Nominated reports whether name is one of the comma-separated tokens of a
// message's Connection field values, compared without regard to case: such
// a field applies to that connection only (RFC 9110 section 7.6.1), e.g.
// "Connection: keep-alive, X-Secret" makes X-Secret hop-by-hop.
func Nominated(connection []string, name string) bool {
	return len(connection) > 0 && httpguts.HeaderValuesContainsToken(connection, name)
}

// Drop reports whether a field named name (canonical) must not cross the
// front end, given the message's Connection field values.
func Drop(connection []string, name string) bool {
	return Is(name) || Nominated(connection, name)
}
