//go:build tools

// Package tools pins local-path-provisioner (kind's default StorageClass "standard"), built by
// hack/node/addons.sh with `go build github.com/rancher/local-path-provisioner` from this module.
package tools

import (
	_ "github.com/rancher/local-path-provisioner"
)
