// Command coredns is the local node's cluster DNS: CoreDNS's own server (coremain) with only the
// plugins a kind-like cluster's Corefile uses, so the binary stays small and builds quickly.
// Built by hack/node/addons.sh. Adding a plugin means importing it below AND naming it in
// order, at the place CoreDNS's own plugin.cfg gives it (a directive that is registered but not
// ordered is rejected at startup).
package main

import (
	"fmt"
	"os"

	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics" // directive "prometheus"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

// order is the execution order of a request through the plugins: the relative order of these
// names in CoreDNS's plugin.cfg (the order in a Corefile does not matter). "prometheus" is
// linked in anyway (the other plugins record their metrics with it); ordering it lets kind's
// Corefile, which has `prometheus :9153`, load unchanged.
var order = []string{
	"reload",
	"bind",
	"ready",
	"health",
	"prometheus",
	"errors",
	"log",
	"loadbalance",
	"cache",
	"hosts",
	"kubernetes",
	"loop",
	"forward",
}

func main() {
	if err := dnsserver.SetDirectives(order); err != nil {
		fmt.Fprintln(os.Stderr, "coredns:", err)
		os.Exit(2)
	}
	coremain.Run()
}
