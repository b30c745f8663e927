// smokepod is the e2e cluster smoke test's container: a static binary in a FROM-scratch image.
//
//	smokepod serve             record a boot in /data/boots, serve GET /healthz on :8080, exit on SIGTERM
//	smokepod resolve NAME...   print "NAME IP..." for each name; exit 1 if any does not resolve
//	smokepod get URL           print the body of an HTTP GET; exit 1 unless 200
//	smokepod cat FILE          print a file
//	smokepod write FILE TEXT   write TEXT to FILE (fsynced)
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "smokepod: "+format+"\n", a...)
	os.Exit(1)
}

func write(path, text string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		fail("%v", err)
	}
	if _, err := f.WriteString(text); err != nil {
		fail("%v", err)
	}
	if err := f.Sync(); err != nil {
		fail("%v", err)
	}
	if err := f.Close(); err != nil {
		fail("%v", err)
	}
}

func serve() {
	host, _ := os.Hostname()
	f, err := os.OpenFile("/data/boots", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fail("%v", err)
	}
	fmt.Fprintf(f, "%s %s\n", host, time.Now().UTC().Format(time.RFC3339Nano))
	_ = f.Sync()
	_ = f.Close()
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "ok %s\n", host)
	})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sigs
		fmt.Printf("smokepod %s: %v, exiting\n", host, s)
		os.Exit(0)
	}()
	fmt.Printf("smokepod %s: serving :8080\n", host)
	fail("%v", http.ListenAndServe(":8080", nil))
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: smokepod serve|resolve|get|cat|write ...")
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "serve":
		serve()
	case "resolve":
		bad := 0
		for _, name := range args {
			addrs, err := net.LookupHost(name)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
				bad++
				continue
			}
			fmt.Printf("%s %s\n", name, strings.Join(addrs, " "))
		}
		if bad > 0 {
			os.Exit(1)
		}
	case "get":
		c := http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get(args[0])
		if err != nil {
			fail("%v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		fmt.Print(string(body))
		if resp.StatusCode != http.StatusOK {
			fail("%s: HTTP %d", args[0], resp.StatusCode)
		}
	case "cat":
		b, err := os.ReadFile(args[0])
		if err != nil {
			fail("%v", err)
		}
		fmt.Print(string(b))
	case "write":
		write(args[0], args[1])
	default:
		fail("unknown command %q", os.Args[1])
	}
}
