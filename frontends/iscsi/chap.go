package iscsi

import (
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// CHAP holds the secrets of CHAP authentication (RFC 1994 with MD5, as
// RFC 7143 section 12.1.3 profiles it).
type CHAP struct {
	// User and Secret authenticate the initiator to the target (one-way
	// CHAP). Secret must be at least 12 bytes, as RFC 7143 recommends for
	// secrets used over untrusted networks; shorter ones are refused at
	// configuration time.
	User, Secret string
	// MutualUser and MutualSecret, when set, let the target authenticate
	// itself to an initiator that asks for it (mutual CHAP). An initiator
	// asking for mutual CHAP from a target without them is refused.
	MutualUser, MutualSecret string
}

// minSecretBytes is the shortest CHAP secret accepted.
const minSecretBytes = 12

func (c *CHAP) validate() error {
	if c.User == "" || len(c.Secret) < minSecretBytes {
		return fmt.Errorf("CHAP needs a user and a secret of at least %d bytes", minSecretBytes)
	}
	if (c.MutualUser == "") != (c.MutualSecret == "") {
		return errors.New("mutual CHAP needs both a user and a secret")
	}
	if c.MutualSecret != "" && len(c.MutualSecret) < minSecretBytes {
		return fmt.Errorf("mutual CHAP secret must be at least %d bytes", minSecretBytes)
	}
	if c.MutualSecret != "" && c.MutualSecret == c.Secret {
		return errors.New("mutual CHAP secret must differ from the initiator's secret")
	}
	return nil
}

// chapChallengeBytes is the length of the challenge the target sends.
const chapChallengeBytes = 16

// chapState is the target side of one CHAP exchange.
type chapState struct {
	id        byte
	challenge []byte
}

func newCHAPState() (*chapState, error) {
	b := make([]byte, chapChallengeBytes+1)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("CHAP challenge: %w", err)
	}
	return &chapState{id: b[0], challenge: b[1:]}, nil
}

func chapResponse(id byte, secret string, challenge []byte) []byte {
	h := md5.New()
	h.Write([]byte{id})
	h.Write([]byte(secret))
	h.Write(challenge)
	return h.Sum(nil)
}

// decodeCHAPBinary decodes a CHAP binary value: 0x hex or 0b base64.
func decodeCHAPBinary(s string) ([]byte, error) {
	switch {
	case len(s) > 2 && (strings.HasPrefix(s, "0x") || strings.HasPrefix(s, "0X")):
		return hex.DecodeString(s[2:])
	case len(s) > 2 && (strings.HasPrefix(s, "0b") || strings.HasPrefix(s, "0B")):
		return base64.StdEncoding.DecodeString(s[2:])
	}
	return nil, fmt.Errorf("CHAP value %q is neither 0x hex nor 0b base64", truncate(s, 40))
}

// verify checks the initiator's CHAP_N and CHAP_R. It is constant time in
// the response.
func (s *chapState) verify(cfg *CHAP, name, resp string) error {
	r, err := decodeCHAPBinary(resp)
	if err != nil {
		return err
	}
	want := chapResponse(s.id, cfg.Secret, s.challenge)
	userOK := subtle.ConstantTimeCompare([]byte(name), []byte(cfg.User)) == 1
	respOK := subtle.ConstantTimeCompare(r, want) == 1
	if !userOK || !respOK {
		return errors.New("CHAP response does not match")
	}
	return nil
}

// mutual answers the initiator's challenge for mutual CHAP.
func (s *chapState) mutual(cfg *CHAP, idText, challengeText string) ([]textPair, error) {
	if cfg.MutualSecret == "" {
		return nil, errors.New("initiator asked for mutual CHAP but the target has no mutual secret")
	}
	id, err := strconv.ParseUint(idText, 0, 8)
	if err != nil {
		return nil, fmt.Errorf("CHAP_I %q: %w", truncate(idText, 20), err)
	}
	c, err := decodeCHAPBinary(challengeText)
	if err != nil {
		return nil, err
	}
	if len(c) == 0 || len(c) > 1024 {
		return nil, fmt.Errorf("CHAP_C of %d bytes", len(c))
	}
	if subtle.ConstantTimeCompare(c, s.challenge) == 1 {
		return nil, errors.New("initiator reflected the target's CHAP challenge")
	}
	r := chapResponse(byte(id), cfg.MutualSecret, c)
	return []textPair{{"CHAP_N", cfg.MutualUser}, {"CHAP_R", "0x" + hex.EncodeToString(r)}}, nil
}
