package iscsi

import (
	"bytes"
	"fmt"
	"strings"
)

// maxTextBytes bounds the key=value text one login or text exchange may
// accumulate across continuation PDUs.
const maxTextBytes = 64 << 10

// textPair is one key=value pair of a text or login PDU, kept in order.
type textPair struct {
	Key, Value string
}

// ParseText parses the NUL-separated key=value pairs of a login or text
// data segment (RFC 7143 section 6.1).
func ParseText(data []byte) ([]textPair, error) {
	var pairs []textPair
	for len(data) > 0 {
		end := bytes.IndexByte(data, 0)
		if end < 0 {
			end = len(data)
		}
		item := string(data[:end])
		data = data[min(end+1, len(data)):]
		if item == "" {
			continue
		}
		key, value, ok := strings.Cut(item, "=")
		if !ok || key == "" || len(key) > 63 {
			return nil, fmt.Errorf("%w: text item %q is not key=value", ErrMalformed, truncate(item, 80))
		}
		pairs = append(pairs, textPair{Key: key, Value: value})
	}
	return pairs, nil
}

// encodeText renders pairs as NUL-terminated key=value items.
func encodeText(pairs []textPair) []byte {
	var b bytes.Buffer
	for _, p := range pairs {
		b.WriteString(p.Key)
		b.WriteByte('=')
		b.WriteString(p.Value)
		b.WriteByte(0)
	}
	return b.Bytes()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
