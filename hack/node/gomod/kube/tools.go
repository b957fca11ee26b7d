//go:build tools

// Package tools pins the node's Kubernetes commands built from this module by
// hack/nodebuild.sh: the same k8s.io/kubernetes version as hack/controlplane.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
