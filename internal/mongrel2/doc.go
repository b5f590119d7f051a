// Package mongrel2 encodes and decodes Mongrel2's handler protocol, byte for
// byte, so that the Caddy module and workerkit interoperate with Mongrel2
// itself and with every existing Mongrel2 handler.
//
// Request frame (front end -> handler, one ZeroMQ frame):
//
//	UUID SP CONN_ID SP PATH SP LEN:HEADERS, LEN:BODY,
//
// where HEADERS is a JSON object (a netstring, ending in ',') or a tnetstring
// dict (ending in '}'). Reply frame (handler -> front end):
//
//	UUID SP LEN:ID ID ID, SP BODY
//
// BODY is a slice of the raw HTTP/1.x response stream; an empty body closes the
// connection(s).
//
// The package has no dependencies beyond the standard library and does not
// allocate on the encode path beyond growing the caller's buffer.
package mongrel2
