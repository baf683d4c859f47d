// Run by tests/codegen.rs inside the generated module (as ./sendall) with
// SPOOLHOUSE_SOCKET and SPOOLHOUSE_INBOX set: every event type of the
// example registry through the socket and through an inbox file, then
// invalid values refused on the client with the collector's own field,
// rule and message (the same raw line sent to the collector beside it).
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"spoolhouse/events"
)

func every(base uint64) []events.Event {
	ios := events.RegistrationPlatformIos
	first := true
	return []events.Event{
		events.Registration{UserID: base + 1, Gender: events.RegistrationGenderFemale, CountryID: 7, Platform: &ios},
		events.WatchProgress{UserID: base + 2, VideoID: 99, VideoTime: 1234},
		events.Vote{UserID: base + 3, TargetUserID: 5, Vote: events.VoteVoteYes, CountryID: 250},
		events.ScreenView{UserID: base + 4, Screen: "home é", Platform: events.ScreenViewPlatformWeb, LoadMs: 42, IsFirstLaunch: &first},
	}
}

// raw: the collector's first answer to one raw line.
func raw(line string) map[string]interface{} {
	c, err := net.Dial("unix", os.Getenv("SPOOLHOUSE_SOCKET"))
	if err != nil {
		panic(err)
	}
	defer c.Close()
	c.Write([]byte(line + "\n"))
	c.(*net.UnixConn).CloseWrite()
	text, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		panic(err)
	}
	var a map[string]interface{}
	json.Unmarshal([]byte(text), &a)
	return a
}

func main() {
	sock := &events.Client{SocketPath: os.Getenv("SPOOLHOUSE_SOCKET"), Timeout: 30 * time.Second}
	n, err := sock.Send(every(3000)...)
	fmt.Println("socket stored", n, err)
	inbox := &events.Client{InboxDir: os.Getenv("SPOOLHOUSE_INBOX"), InboxName: "typed-go.log"}
	n, err = inbox.Send(every(4000)...)
	fmt.Println("inbox stored", n, err)

	now := time.Now().UnixMilli()
	cases := []struct {
		ev   events.Event
		line string
	}{
		{events.Vote{UserID: 1, TargetUserID: 2, Vote: "maybe", CountryID: 7},
			fmt.Sprintf(`{"event":"vote","time":%d,"attrs":{"user_id":1,"target_user_id":2,"vote":"maybe","country_id":7}}`, now)},
		{events.ScreenView{UserID: 1, Screen: strings.Repeat("x", 65), Platform: "web", LoadMs: 1},
			fmt.Sprintf(`{"event":"screen_view","time":%d,"attrs":{"user_id":1,"screen":"%s","platform":"web","load_ms":1}}`, now, strings.Repeat("x", 65))},
		{events.ScreenView{UserID: 1, Screen: "a\x1fb", Platform: "web", LoadMs: 1},
			fmt.Sprintf(`{"event":"screen_view","time":%d,"attrs":{"user_id":1,"screen":"a\u001fb","platform":"web","load_ms":1}}`, now)},
		{events.WatchProgress{UserID: 1, VideoID: 2, VideoTime: 3, TimeMs: 17000000000},
			`{"event":"watch_progress","time":17000000000,"attrs":{"user_id":1,"video_id":2,"video_time":3}}`},
	}
	for _, c := range cases {
		_, err := c.ev.Line()
		var v *events.ValidationError
		if !errors.As(err, &v) {
			fmt.Println("not refused on the client:", c.line)
			os.Exit(1)
		}
		got := raw(c.line)
		if got["field"] != v.Field || got["rule"] != v.Rule || got["error"] != "line 1: "+v.Error() {
			fmt.Println("client:", v.Field, v.Rule, v.Error())
			fmt.Println("collector:", got)
			os.Exit(1)
		}
	}
	fmt.Println("client errors equal the collector's:", len(cases))
	fmt.Println("ok")
}
