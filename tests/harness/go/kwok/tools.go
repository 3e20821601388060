//go:build tools

// Package tools records the KWOK command scripts/k8s-binaries builds, so that its module
// and every dependency stay in go.mod and go.sum.
package tools

import (
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
