package zmqx

import "strconv"

// Messages a worker sends. A worker echoes the connection ids it read from
// request frames, so they are strings here.

// AppendHello appends HELLO <maxConcurrent>.
func AppendHello(dst []byte, maxConcurrent int) []byte {
	dst = append(dst, helloWord...)
	dst = append(dst, ' ')
	return strconv.AppendInt(dst, int64(maxConcurrent), 10)
}

// AppendHeartbeat appends HB.
func AppendHeartbeat(dst []byte) []byte { return append(dst, heartbeatWord...) }

// AppendBye appends BYE.
func AppendBye(dst []byte) []byte { return append(dst, byeWord...) }

// AppendReset appends RESET.
func AppendReset(dst []byte) []byte { return append(dst, resetWord...) }

// AppendAck appends ACK and connIDs. An ACK needs at least one id: with
// none, add them with AppendID (a caller whose ids are not a []string).
func AppendAck(dst []byte, connIDs ...string) []byte {
	return appendIDs(append(dst, ackWord...), connIDs)
}

// AppendNack appends NACK and connIDs; like AppendAck, it needs at least
// one id in the end.
func AppendNack(dst []byte, connIDs ...string) []byte {
	return appendIDs(append(dst, nackWord...), connIDs)
}

// AppendID appends one more connection id to an ACK or NACK.
func AppendID(dst []byte, connID string) []byte {
	dst = append(dst, ' ')
	return append(dst, connID...)
}

func appendIDs(dst []byte, connIDs []string) []byte {
	for _, id := range connIDs {
		dst = AppendID(dst, id)
	}
	return dst
}

// AppendUploadCredit appends UCREDIT <connID> <n>.
func AppendUploadCredit(dst []byte, connID string, n int64) []byte {
	dst = append(dst, uploadCreditWord...)
	dst = AppendID(dst, connID)
	dst = append(dst, ' ')
	return strconv.AppendInt(dst, n, 10)
}

// Messages the front end sends. It numbers connections itself, so their
// ids are integers here.

// AppendCredit appends CREDIT <connID> <n>.
func AppendCredit(dst []byte, connID uint64, n int64) []byte {
	dst = appendVerbID(dst, creditWord, connID)
	dst = append(dst, ' ')
	return strconv.AppendInt(dst, n, 10)
}

// AppendDisconnect appends DISCONNECT <connID>.
func AppendDisconnect(dst []byte, connID uint64) []byte {
	return appendVerbID(dst, disconnectWord, connID)
}

// AppendReq appends REQ <frame>, frame being a Mongrel2 request frame.
func AppendReq(dst, frame []byte) []byte {
	dst = append(dst, reqWord...)
	dst = append(dst, ' ')
	return append(dst, frame...)
}

// AppendBodyHead appends BODY <connID> and the space before the bytes, for
// a caller that reads the bytes straight into the message after it.
func AppendBodyHead(dst []byte, connID uint64) []byte {
	return append(appendVerbID(dst, bodyWord, connID), ' ')
}

// AppendBody appends BODY <connID> <data>.
func AppendBody(dst []byte, connID uint64, data []byte) []byte {
	return append(AppendBodyHead(dst, connID), data...)
}

// AppendBodyEnd appends BODYEND <connID>.
func AppendBodyEnd(dst []byte, connID uint64) []byte {
	return appendVerbID(dst, bodyEndWord, connID)
}

// AppendBodyErr appends BODYERR <connID>.
func AppendBodyErr(dst []byte, connID uint64) []byte {
	return appendVerbID(dst, bodyErrWord, connID)
}

// AppendPause appends PAUSE.
func AppendPause(dst []byte) []byte { return append(dst, pauseWord...) }

// AppendResume appends RESUME.
func AppendResume(dst []byte) []byte { return append(dst, resumeWord...) }

// AppendWelcome appends WELCOME.
func AppendWelcome(dst []byte) []byte { return append(dst, welcomeWord...) }

// AppendConfirm appends CONFIRM and connIDs; like AppendAck, it needs at
// least one id in the end (add them with AppendUintID).
func AppendConfirm(dst []byte, connIDs ...uint64) []byte {
	dst = append(dst, confirmWord...)
	for _, id := range connIDs {
		dst = AppendUintID(dst, id)
	}
	return dst
}

// AppendUintID appends one more connection id, numbered by the front end,
// to a CONFIRM.
func AppendUintID(dst []byte, connID uint64) []byte {
	dst = append(dst, ' ')
	return strconv.AppendUint(dst, connID, 10)
}

func appendVerbID(dst []byte, word string, connID uint64) []byte {
	dst = append(dst, word...)
	dst = append(dst, ' ')
	return strconv.AppendUint(dst, connID, 10)
}
