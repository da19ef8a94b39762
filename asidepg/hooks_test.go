package asidepg

// hooks are the tests' side of the seams (relay.go): a function called at
// each point, and the broken variant that records changes after the
// commit instead of in the transaction.
type hooks struct {
	at                func(point)
	recordAfterCommit bool
}

func (h *hooks) reached(p point) {
	if h.at != nil {
		h.at(p)
	}
}

func (h *hooks) recordsAfterCommit() bool { return h.recordAfterCommit }
