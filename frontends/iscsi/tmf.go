package iscsi

// Task management functions (RFC 7143 section 11.5.1).
const (
	tmfAbortTask       = 1
	tmfAbortTaskSet    = 2
	tmfClearACA        = 3
	tmfClearTaskSet    = 4
	tmfLUNReset        = 5
	tmfTargetWarmReset = 6
	tmfTargetColdReset = 7
	tmfTaskReassign    = 8
)

// Task management responses.
const (
	tmfComplete        = 0
	tmfNoTask          = 1
	tmfNoLUN           = 2
	tmfReassignNotSupp = 4
	tmfNotSupported    = 5
)

func (c *conn) taskManagement(p *PDU) error {
	if c.sess.discovery {
		return c.reject(p, 0x04)
	}
	if !c.acceptCmdSN(p, false) {
		return nil
	}
	fn := p.BHS[1] & 0x7f
	lunField := p.lunField()
	idx, ok := decodeLUN(lunField)
	lunOK := ok && idx < len(c.sess.target.luns)
	resp := byte(tmfComplete)
	switch fn {
	case tmfAbortTask:
		rtt := p.u32(20)
		if c.abort(func(t *task) bool { return t.itt == rtt }) == 0 {
			resp = tmfNoTask
		}
	case tmfAbortTaskSet, tmfClearTaskSet:
		if !lunOK {
			resp = tmfNoLUN
			break
		}
		c.abort(func(t *task) bool { return t.lunField == lunField })
	case tmfLUNReset:
		if !lunOK {
			resp = tmfNoLUN
			break
		}
		c.abort(func(t *task) bool { return t.lunField == lunField })
		c.sess.target.luns[idx].Reset()
	case tmfTargetWarmReset, tmfTargetColdReset:
		c.abort(func(*task) bool { return true })
		for _, lu := range c.sess.target.luns {
			lu.Reset()
		}
	case tmfTaskReassign:
		resp = tmfReassignNotSupp
	default: // CLEAR ACA (NACA is not supported) and unknown functions
		resp = tmfNotSupported
	}
	c.log.Info("task management", "function", fn, "response", resp)
	r := &PDU{}
	r.BHS[0] = opTMFResp
	r.BHS[1] = 0x80
	r.BHS[2] = resp
	copy(r.BHS[16:20], p.BHS[16:20])
	if err := c.send(r, withStatus); err != nil {
		return err
	}
	if fn == tmfTargetColdReset && resp == tmfComplete {
		return errProtocol("target cold reset closes the connection")
	}
	return nil
}

// abort aborts the tasks matching match: none of them sends a response.
// It returns, once they have all ended, how many there were.
func (c *conn) abort(match func(*task) bool) int {
	c.mu.Lock()
	var victims []*task
	for _, t := range c.tasks {
		if match(t) {
			t.aborted = true
			victims = append(victims, t)
		}
	}
	c.mu.Unlock()
	if len(victims) > 0 {
		c.idle() // started commands end only when their devices run
	}
	for _, t := range victims {
		t.cancel()
		<-t.done
	}
	return len(victims)
}
