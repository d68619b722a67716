// Command referrers-registry serves go-containerregistry's registry (pkg/registry, the one
// `crane registry serve` runs) with the OCI 1.1 referrers API switched on, as registries
// like Docker Hub and Zot serve it, for image-sync's end-to-end tests. It listens on
// -addr (127.0.0.1 only) and writes one Distribution-style access-log line per request to
// stdout ("METHOD URI HTTP/1.1" STATUS), which the tests count like Distribution's.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

type recorder struct {
	http.ResponseWriter
	status int
	size   int
}

func (r *recorder) WriteHeader(status int) {
	r.status = status
	r.ResponseWriter.WriteHeader(status)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.size += n
	return n, err
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on (loopback only)")
	flag.Parse()
	if !strings.HasPrefix(*addr, "127.0.0.1:") {
		log.Fatalf("-addr %q: only 127.0.0.1 is allowed", *addr)
	}
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	handler := registry.New(registry.WithReferrersSupport(true), registry.Logger(log.New(io.Discard, "", 0)))
	var mu sync.Mutex
	logged := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := &recorder{ResponseWriter: w}
		handler.ServeHTTP(rec, req)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		mu.Lock()
		fmt.Fprintf(os.Stdout, "%s - - [%s] \"%s %s %s\" %d %d \"\" %q\n",
			req.RemoteAddr, time.Now().UTC().Format("02/Jan/2006:15:04:05 -0700"),
			req.Method, req.URL.RequestURI(), req.Proto, rec.status, rec.size, req.UserAgent())
		mu.Unlock()
	})
	server := &http.Server{Handler: logged, ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(server.Serve(listener))
}
