package zmqx

// Verb is the first word of a control message.
type Verb uint8

// The verbs of zmqx/1. The first group is sent by workers, the second by
// the front end.
const (
	// VerbUnknown is what Parse reports for a verb it does not know (or an
	// empty message). A peer ignores such messages, so that the protocol
	// can grow.
	VerbUnknown Verb = iota

	// Hello opens every new control connection: HELLO <max_concurrent>.
	Hello
	// Heartbeat says the worker lives: HB.
	Heartbeat
	// Ack says the worker took requests: ACK <conn_id> [<conn_id> ...].
	Ack
	// Nack hands requests back unstarted (the worker is paused):
	// NACK <conn_id> [<conn_id> ...].
	Nack
	// Bye says the worker is draining: it takes no new requests.
	Bye
	// UploadCredit says the handler read that many bytes of a streamed
	// body: UCREDIT <conn_id> <bytes>.
	UploadCredit
	// Reset says the worker was silent past its liveness lease and
	// cancelled every request it had acknowledged: RESET.
	Reset

	// Credit grants reply bytes of a windowed request: CREDIT <conn_id> <bytes>.
	Credit
	// Disconnect says the client of a request went away: DISCONNECT <conn_id>.
	Disconnect
	// Req addresses a request frame to this worker: REQ <request frame>.
	Req
	// Body carries a chunk of a streamed request body: BODY <conn_id> <bytes>.
	Body
	// BodyEnd ends a streamed body: BODYEND <conn_id>.
	BodyEnd
	// BodyErr ends a streamed body as failed: BODYERR <conn_id>.
	BodyErr
	// Pause tells a worker to take no new requests from this front end.
	Pause
	// Resume lifts a Pause.
	Resume
	// Welcome answers every HELLO on the connection that carried it: the
	// front end reads that connection, so what the worker sends on it
	// (ACKs above all) is heard.
	Welcome
	// Confirm answers the ACK of a request marked HeaderConfirm: the front
	// end has recorded this worker as the request's holder and will not
	// send it to another, so the worker may start it now:
	// CONFIRM <conn_id> [<conn_id> ...].
	Confirm

	verbCount // not a verb: the number of them
)

// The verbs' spellings, each written once.
const (
	helloWord        = "HELLO"
	heartbeatWord    = "HB"
	ackWord          = "ACK"
	nackWord         = "NACK"
	byeWord          = "BYE"
	uploadCreditWord = "UCREDIT"
	resetWord        = "RESET"
	creditWord       = "CREDIT"
	disconnectWord   = "DISCONNECT"
	reqWord          = "REQ"
	bodyWord         = "BODY"
	bodyEndWord      = "BODYEND"
	bodyErrWord      = "BODYERR"
	pauseWord        = "PAUSE"
	resumeWord       = "RESUME"
	welcomeWord      = "WELCOME"
	confirmWord      = "CONFIRM"
)

var verbWords = [verbCount]string{
	VerbUnknown:  "",
	Hello:        helloWord,
	Heartbeat:    heartbeatWord,
	Ack:          ackWord,
	Nack:         nackWord,
	Bye:          byeWord,
	UploadCredit: uploadCreditWord,
	Reset:        resetWord,
	Credit:       creditWord,
	Disconnect:   disconnectWord,
	Req:          reqWord,
	Body:         bodyWord,
	BodyEnd:      bodyEndWord,
	BodyErr:      bodyErrWord,
	Pause:        pauseWord,
	Resume:       resumeWord,
	Welcome:      welcomeWord,
	Confirm:      confirmWord,
}

// String is the verb as it is sent; "" for VerbUnknown.
func (v Verb) String() string {
	if v >= verbCount {
		return ""
	}
	return verbWords[v]
}

// FromWorker reports whether workers send v (rather than the front end).
func (v Verb) FromWorker() bool { return v >= Hello && v <= Reset }

// lookupVerb returns the verb spelled word, or VerbUnknown.
func lookupVerb(word []byte) Verb {
	switch string(word) { // no allocation: the compiler compares in place
	case helloWord:
		return Hello
	case heartbeatWord:
		return Heartbeat
	case ackWord:
		return Ack
	case nackWord:
		return Nack
	case byeWord:
		return Bye
	case uploadCreditWord:
		return UploadCredit
	case resetWord:
		return Reset
	case creditWord:
		return Credit
	case disconnectWord:
		return Disconnect
	case reqWord:
		return Req
	case bodyWord:
		return Body
	case bodyEndWord:
		return BodyEnd
	case bodyErrWord:
		return BodyErr
	case pauseWord:
		return Pause
	case resumeWord:
		return Resume
	case welcomeWord:
		return Welcome
	case confirmWord:
		return Confirm
	}
	return VerbUnknown
}
