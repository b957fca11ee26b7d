//go:build tools

// Package tools pins the node's helpers built from this module (hack/nodebuild.sh): the CNI
// plugins the node's conflist uses and crictl (node-down stops the pods' sandboxes with it).
package tools

import (
	_ "github.com/containernetworking/plugins/plugins/ipam/host-local"
	_ "github.com/containernetworking/plugins/plugins/main/bridge"
	_ "github.com/containernetworking/plugins/plugins/main/loopback"
	_ "github.com/containernetworking/plugins/plugins/meta/portmap"
	_ "sigs.k8s.io/cri-tools/cmd/crictl"
)
