//go:build tools

// Package controlplane pins the Kubernetes control-plane commands Sonde's e2e tests run against.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)
