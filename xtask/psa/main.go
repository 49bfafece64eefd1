// Command psa-check evaluates pod specs against the Pod Security Standards with the very code
// the kube-apiserver's PodSecurity admission runs (k8s.io/pod-security-admission), so that
// `cargo xtask` can tell without a cluster whether a namespace's enforce level would refuse a pod.
//
// Input (stdin): a JSON array of {"object", "level", "version", "metadata", "spec"}, where spec
// is a core/v1 PodSpec and level/version are a namespace's pod-security.kubernetes.io/enforce
// and enforce-version labels. Output (stdout): a JSON array of {"object", "level", "version",
// "allowed", "forbidden"}. Exit status 2 on bad input.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

type request struct {
	Object   string            `json:"object"`
	Level    string            `json:"level"`
	Version  string            `json:"version"`
	Metadata metav1.ObjectMeta `json:"metadata"`
	Spec     corev1.PodSpec    `json:"spec"`
}

type verdict struct {
	Object    string   `json:"object"`
	Level     string   `json:"level"`
	Version   string   `json:"version"`
	Allowed   bool     `json:"allowed"`
	Forbidden []string `json:"forbidden"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "psa-check: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	var requests []request
	if err := dec.Decode(&requests); err != nil {
		fail("reading the pods: %v", err)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks())
	if err != nil {
		fail("loading the checks: %v", err)
	}
	verdicts := make([]verdict, 0, len(requests))
	for _, r := range requests {
		level, err := api.ParseLevel(r.Level)
		if err != nil {
			fail("%s: %v", r.Object, err)
		}
		version, err := api.ParseVersion(r.Version)
		if err != nil {
			fail("%s: %v", r.Object, err)
		}
		lv := api.LevelVersion{Level: level, Version: version}
		v := verdict{Object: r.Object, Level: r.Level, Version: r.Version, Allowed: true, Forbidden: []string{}}
		for _, result := range evaluator.EvaluatePod(lv, &r.Metadata, &r.Spec) {
			if !result.Allowed {
				v.Allowed = false
				v.Forbidden = append(v.Forbidden, fmt.Sprintf("%s (%s)", result.ForbiddenReason, result.ForbiddenDetail))
			}
		}
		verdicts = append(verdicts, v)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetIndent("", "  ")
	if err := out.Encode(verdicts); err != nil {
		fail("writing the verdicts: %v", err)
	}
}
