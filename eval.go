package aside

import (
	"context"
	"slices"

	"github.com/redis/go-redis/v9"
)

// scriptRun is how a script goes into a pipeline: Script.EvalSha, or
// Script.Eval with its body.
type scriptRun func(ctx context.Context, c redis.Scripter, keys []string, args ...any) *redis.Cmd

// evalEntries runs an entry script once per entry key (with its lease key)
// in one round trip: Script.Run (EVALSHA, then EVAL if the server has not
// seen the script) for one entry, a pipeline of EVALSHAs for several. The
// entries a server answered NOSCRIPT — a new or flushed server, a Cluster
// node the script has not reached yet — did not run, and go once more as
// EVAL, with the script's body; the others ran and are not sent again.
func (s *Store) evalEntries(ctx context.Context, script *redis.Script, rks []string, args func(i int) []any) ([]*redis.Cmd, error) {
	if len(rks) == 1 {
		cmd := script.Run(ctx, s.rdb, []string{rks[0], leaseKey(rks[0])}, args(0)...)
		if s.nodes != nil {
			s.recordNodes(ctx, rks, func(int) error { return cmd.Err() })
		}
		return []*redis.Cmd{cmd}, cmd.Err()
	}
	cmds := make([]*redis.Cmd, len(rks))
	if s.nodes != nil {
		defer s.recordNodes(ctx, rks, func(i int) error { return cmds[i].Err() })
	}
	send := func(run scriptRun, only func(i int) bool) {
		_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, rk := range rks {
				if only(i) {
					cmds[i] = run(ctx, p, []string{rk, leaseKey(rk)}, args(i)...)
				}
			}
			return nil
		})
	}
	send(script.EvalSha, func(int) bool { return true })
	if slices.ContainsFunc(cmds, func(cmd *redis.Cmd) bool { return isNoScript(cmd.Err()) }) {
		send(script.Eval, func(i int) bool { return isNoScript(cmds[i].Err()) || variantOn(s.hooks, vResendAllScripts) })
	}
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			return cmds, err // the first failure, as a pipeline reports it
		}
	}
	return cmds, nil
}

func parseReply(res []any, err error) (kind int64, payload string) {
	if err != nil || len(res) == 0 {
		return -1, ""
	}
	kind, _ = res[0].(int64)
	if len(res) > 1 {
		payload, _ = res[1].(string)
	}
	return kind, payload
}

// isNoScript reports a reply of a server that has not seen the script.
func isNoScript(err error) bool { return err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") }
