//go:build tools

// Package tools pins kube-router, built by hack/node/addons.sh from this module and run on the
// local node in firewall-only mode: its network-policy controller (iptables + ipset, as k3s
// embeds it) enforces NetworkPolicy; routing and the service proxy stay with the bridge CNI and
// kube-proxy.
package tools

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
