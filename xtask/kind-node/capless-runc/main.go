// Command capless-runc is an OCI runtime for dockerd on machines whose capability bounding set
// lacks CAP_SYS_RESOURCE (some CI sandboxes): a privileged container (a kind node) asks for every
// capability the kernel knows, and runc fails with "unable to apply caps: operation not
// permitted". It removes CAP_SYS_RESOURCE from the bundle's config.json on `create`/`run` and
// from the process file on `exec`, then runs runc with the same arguments. Nothing else changes.
// xtask registers it only where the bounding set lacks the capability.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

const dropped = "CAP_SYS_RESOURCE"

// The runc binary this wraps; $CAPLESS_RUNC overrides it.
func runc() string {
	if p := os.Getenv("CAPLESS_RUNC"); p != "" {
		return p
	}
	for _, p := range []string{"/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "runc"
}

// flagValue finds `--name value` or `--name=value` in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == "--"+name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// command is runc's subcommand when it is one whose spec this rewrites: the first argument
// that names one (global flags before it take paths as values, never these words).
func command(args []string) string {
	for _, a := range args {
		switch a {
		case "create", "run", "exec":
			return a
		}
	}
	return ""
}

// strip removes the capability from every set of a capabilities object.
func strip(caps map[string]any) {
	for set, v := range caps {
		list, ok := v.([]any)
		if !ok {
			continue
		}
		kept := make([]any, 0, len(list))
		for _, c := range list {
			if c != dropped {
				kept = append(kept, c)
			}
		}
		caps[set] = kept
	}
}

// rewrite strips the capability from the process that `process` finds in the JSON at path.
func rewrite(path string, process func(doc map[string]any) map[string]any) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if p := process(doc); p != nil {
		if caps, ok := p["capabilities"].(map[string]any); ok {
			strip(caps)
		}
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, info.Mode().Perm())
}

func main() {
	args := os.Args[1:]
	var err error
	switch command(args) {
	case "create", "run":
		bundle := flagValue(args, "bundle")
		if bundle == "" {
			bundle = "."
		}
		err = rewrite(filepath.Join(bundle, "config.json"), func(doc map[string]any) map[string]any {
			p, _ := doc["process"].(map[string]any)
			return p
		})
	case "exec":
		if p := flagValue(args, "process"); p != "" {
			err = rewrite(p, func(doc map[string]any) map[string]any { return doc })
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "capless-runc: %v\n", err)
		os.Exit(1)
	}
	bin := runc()
	if err := syscall.Exec(bin, append([]string{bin}, args...), os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "capless-runc: exec %s: %v\n", bin, err)
		os.Exit(1)
	}
}
