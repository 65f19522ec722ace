package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// defaultNamespace is used by commands that address one namespaced resource
// when --namespace is not given; lists default to every namespace.
const defaultNamespace = "default"

// listAll pages through a List RPC and returns every item and the index of
// the last page.
func listAll[T any](ctx context.Context, req *meshfedv1.ListRequest,
	page func(context.Context, *meshfedv1.ListRequest) ([]T, string, uint64, error),
) ([]T, uint64, error) {
	var all []T
	req = proto.CloneOf(req)
	if req.Page == nil {
		req.Page = &meshfedv1.PageRequest{}
	}
	for {
		items, next, index, err := page(ctx, req)
		if err != nil {
			return nil, 0, err
		}
		all = append(all, items...)
		if next == "" {
			return all, index, nil
		}
		if next == req.Page.PageToken {
			return nil, 0, fmt.Errorf("server returned the same page token %q twice", next)
		}
		req.Page.PageToken = next
	}
}

// watchEvent is every Watch*Response.
type watchEvent interface {
	proto.Message
	GetType() meshfedv1.WatchEventType
	GetIndex() uint64
}

// watch prints the events of a watch stream until the stream ends or the
// context is cancelled (Ctrl-C), which is a normal end. With -o json each
// event is one JSON object per line; otherwise one line of text: the event
// type, then what describe says about the resource.
func watch[E watchEvent](ctx context.Context, a *app, recv func() (E, error), describe func(E) string) error {
	for {
		ev, err := recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			if isCanceled(ctx, err) {
				return nil
			}
			return err
		}
		if a.isJSON() {
			if err := a.printJSONLine(ev); err != nil {
				return err
			}
			continue
		}
		line := strings.ToUpper(strings.ReplaceAll(enumString(ev.GetType()), "-", "_"))
		if ev.GetType() == meshfedv1.WatchEventType_WATCH_EVENT_TYPE_END_OF_SNAPSHOT {
			line += fmt.Sprintf(" index=%d", ev.GetIndex())
		} else {
			line += " " + describe(ev)
		}
		if _, err := fmt.Fprintln(a.stdout, line); err != nil {
			return err
		}
	}
}

// addNamespaceFlag adds -n/--namespace; def is "default" for commands on one
// resource and "" (every namespace) for lists.
func addNamespaceFlag(cmd *cobra.Command, ns *string, def string) {
	usage := "namespace of the resource"
	if def == "" {
		usage = "only this namespace (default: every namespace)"
	}
	cmd.Flags().StringVarP(ns, "namespace", "n", def, usage)
}

// exactArgs requires exactly the named positional arguments.
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) < len(names):
			return usageErrorf("missing %s", strings.Join(names[len(args):], " "))
		case len(args) > len(names):
			if len(names) == 0 {
				return usageErrorf("unexpected argument %q", args[0])
			}
			return usageErrorf("unexpected argument %q: expected only %s", args[len(names)], strings.Join(names, " "))
		}
		return nil
	}
}

// parseLabels reads repeated k=v flags.
func parseLabels(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usageErrorf("%s %q: must be key=value", flag, kv)
		}
		out[k] = v
	}
	return out, nil
}

// checkPort validates a port flag.
func checkPort(flag string, p uint32) error {
	if p < 1 || p > 65535 {
		return usageErrorf("%s %d: must be between 1 and 65535", flag, p)
	}
	return nil
}

// deleted prints the result of a delete.
func (a *app) deleted(kind, name string, resp *meshfedv1.DeleteResponse) error {
	if a.isJSON() {
		return a.printJSON(resp)
	}
	_, err := fmt.Fprintf(a.stdout, "Deleted %s %s\n", kind, name)
	return err
}
