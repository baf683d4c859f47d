
// ---- Runtime: the collector's rules and its protocol (docs/protocol.md) ----

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"net"
	"os"
	"strings"
	"time"
)

// The event time range the collector accepts, in milliseconds.
const (
	MinTimeMs = @MIN_TIME_MS@
	MaxTimeMs = @MAX_TIME_MS@
)

// ValidationError says which registry rule an event breaks: the collector
// would reject it with the same field, rule code and message.
type ValidationError struct {
	Field   string
	Rule    string
	Message string
}

func (e *ValidationError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return "`" + e.Field + "` " + e.Message
}

func invalid(field, rule, message string) *ValidationError {
	return &ValidationError{Field: field, Rule: rule, Message: message}
}

// Rejection is the collector's answer for a line it did not store.
type Rejection struct {
	Line  int    `json:"line"`
	Field string `json:"field"`
	Rule  string `json:"rule"`
	Error string `json:"error"`
}

// RejectedError: the collector rejected lines (the others were stored).
type RejectedError struct{ Rejections []Rejection }

func (e *RejectedError) Error() string {
	parts := make([]string, len(e.Rejections))
	for i, r := range e.Rejections {
		parts[i] = r.Error
	}
	return strings.Join(parts, "; ")
}

// ErrNotStored: events could not be stored before the client's timeout.
var ErrNotStored = errors.New("events not stored within the timeout (the collector refused them, was unreachable, or closed the connection); send them again")

// Event is one typed event of the registry.
type Event interface {
	// Line validates the event and returns it as one line of the protocol.
	Line() ([]byte, error)
}

func checkFloat(field string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return invalid("attrs."+field, "wrong_type", "must be a number")
	}
	return nil
}

func checkString(field, v string, maxLen int) error {
	if len(v) > maxLen {
		return invalid("attrs."+field, "too_long", fmt.Sprintf("is longer than its max_len of %d bytes", maxLen))
	}
	if strings.ContainsRune(v, '\x1f') {
		return invalid("attrs."+field, "key_separator", "may not contain U+001F (the unit separator, which joins key fields in the keyed-state table)")
	}
	return nil
}

func checkEnum(field, v string, allowed []string) error {
	for _, a := range allowed {
		if a == v {
			return nil
		}
	}
	return invalid("attrs."+field, "not_in_enum", "must be one of: "+strings.Join(allowed, ", "))
}

func checkTime(t int64, pastS, futureS int64) (int64, error) {
	now := time.Now().UnixMilli()
	if t == 0 {
		return now, nil
	}
	if t < MinTimeMs || t > MaxTimeMs {
		return 0, invalid("time", "time_out_of_range", fmt.Sprintf("must be milliseconds since the Unix epoch, from %d (2000-01-01) to %d (2105-12-31); a value near 1.7e9 is seconds, multiply by 1000", int64(MinTimeMs), int64(MaxTimeMs)))
	}
	if t < now-pastS*1000 {
		return 0, invalid("time", "time_too_old", fmt.Sprintf("is more than %d s before the collector's clock (the event type's accept_past_s); to load older history on purpose, raise the collector's limits.history_s", pastS))
	}
	if t > now+futureS*1000 {
		return 0, invalid("time", "time_too_new", fmt.Sprintf("is more than %d s after the collector's clock (the event type's accept_future_s); is the sender's clock right?", futureS))
	}
	return t, nil
}

func line(event string, t int64, attrs interface{}) ([]byte, error) {
	b, err := json.Marshal(struct {
		Event string      `json:"event"`
		Time  int64       `json:"time"`
		Attrs interface{} `json:"attrs"`
	}{event, t, attrs})
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Client sends events to the collector on this host: over its Unix socket
// (pipelined; Send returns once every event is acknowledged, i.e. durable
// in the spool; refused lines are sent again with backoff until Timeout),
// or by appending to a file in its inbox (no network call at all).
type Client struct {
	SocketPath string
	InboxDir   string
	InboxName  string
	Timeout    time.Duration
	conn       net.Conn
	reader     *bufio.Reader
	lines      int
}

// NewClientFromEnv: the socket in SPOOLHOUSE_SOCKET, else the inbox in
// SPOOLHOUSE_INBOX.
func NewClientFromEnv() (*Client, error) {
	c := &Client{
		SocketPath: os.Getenv("SPOOLHOUSE_SOCKET"),
		InboxDir:   os.Getenv("SPOOLHOUSE_INBOX"),
		Timeout:    30 * time.Second,
	}
	if c.SocketPath == "" && c.InboxDir == "" {
		return nil, errors.New("no collector to send to: set SPOOLHOUSE_SOCKET or SPOOLHOUSE_INBOX")
	}
	return c, nil
}

// Close closes the connection, if any.
func (c *Client) Close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn, c.reader = nil, nil
	}
}

// Send validates and sends the events; it returns how many were stored.
// A *ValidationError before anything is sent; a *RejectedError if the
// collector rejected some (the others are stored); ErrNotStored if some
// could not be stored within the timeout.
func (c *Client) Send(events ...Event) (int, error) {
	lines := make([][]byte, 0, len(events))
	for _, e := range events {
		l, err := e.Line()
		if err != nil {
			return 0, err
		}
		lines = append(lines, l)
	}
	if len(lines) == 0 {
		return 0, nil
	}
	if c.SocketPath == "" {
		return c.appendInbox(lines)
	}
	return c.sendSocket(lines)
}

func (c *Client) appendInbox(lines [][]byte) (int, error) {
	name := c.InboxName
	if name == "" {
		name = fmt.Sprintf("events-%d.log", os.Getpid())
	}
	f, err := os.OpenFile(c.InboxDir+"/"+name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	// One write() per line: lines of several writers never interleave.
	for i, l := range lines {
		if _, err := f.Write(l); err != nil {
			return i, err
		}
	}
	return len(lines), nil
}

type answer struct {
	Rejection
	Ack      *int    `json:"ack"`
	Accepted int     `json:"accepted"`
	Refused  *string `json:"refused"`
	From     int     `json:"from"`
	Through  int     `json:"through"`
	Closing  *string `json:"closing"`
}

func (c *Client) sendSocket(lines [][]byte) (int, error) {
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	deadline := time.Now().Add(timeout)
	pending := lines
	var rejected []Rejection
	stored := 0
	for attempt := 0; len(pending) > 0; attempt++ {
		if time.Now().After(deadline) {
			return stored, ErrNotStored
		}
		if attempt > 0 {
			backoff := time.Duration(float64(50*time.Millisecond) * math.Pow(2, math.Min(float64(attempt), 6)) * (0.75 + rand.Float64()/2))
			if backoff > 2*time.Second {
				backoff = 2 * time.Second
			}
			time.Sleep(backoff)
		}
		var retry [][]byte
		settled := 0
		err := func() error {
			if c.conn == nil {
				conn, err := net.Dial("unix", c.SocketPath)
				if err != nil {
					return err
				}
				c.conn, c.reader, c.lines = conn, bufio.NewReader(conn), 0
			}
			c.conn.SetDeadline(deadline)
			// The collector numbers lines from 1 per connection.
			base := c.lines
			var all []byte
			for _, l := range pending {
				all = append(all, l...)
			}
			if _, err := c.conn.Write(all); err != nil {
				return err
			}
			c.lines += len(pending)
			for settled < len(pending) {
				text, err := c.reader.ReadBytes('\n')
				if err != nil {
					return err
				}
				var a answer
				if err := json.Unmarshal(text, &a); err != nil {
					return err
				}
				switch {
				case a.Rule != "":
					rejected = append(rejected, a.Rejection)
				case a.Ack != nil:
					stored += a.Accepted
					settled = *a.Ack - base
				case a.Refused != nil:
					retry = append(retry, pending[a.From-base-1:a.Through-base]...)
					settled = a.Through - base
				case a.Closing != nil:
					return errors.New(*a.Closing)
				}
			}
			return nil
		}()
		if err != nil {
			// Lines after the last ack or refusal were not stored: again,
			// on a new connection.
			retry = append(retry, pending[settled:]...)
			c.Close()
		}
		pending = retry
	}
	if len(rejected) > 0 {
		return stored, &RejectedError{Rejections: rejected}
	}
	return stored, nil
}
