package device

import "encoding/binary"

// The AES-256 key schedule, for the AES-NI XTS path (crypto/aes keeps its
// round keys to itself). Checked against FIPS-197's key expansion example
// and, through the ciphertext, against crypto/aes (crypt_test.go).

var sbox [256]byte

func init() {
	// The multiplicative inverse in GF(2^8) followed by the affine
	// transform, walking the field with generator 3.
	p, q := byte(1), byte(1)
	for {
		p = p ^ p<<1 ^ byte(int8(p)>>7)&0x1b // p *= 3
		q ^= q << 1                          // q /= 3
		q ^= q << 2
		q ^= q << 4
		if q&0x80 != 0 {
			q ^= 0x09
		}
		x := q ^ (q<<1 | q>>7) ^ (q<<2 | q>>6) ^ (q<<3 | q>>5) ^ (q<<4 | q>>4)
		sbox[p] = x ^ 0x63
		if p == 1 {
			break
		}
	}
	sbox[0] = 0x63
}

func xtime(b byte) byte { return b<<1 ^ byte(int8(b)>>7)&0x1b }

func subWord(w uint32) uint32 {
	return uint32(sbox[w>>24])<<24 | uint32(sbox[w>>16&0xff])<<16 | uint32(sbox[w>>8&0xff])<<8 | uint32(sbox[w&0xff])
}

// expandKey256 returns AES-256's 15 round keys in the byte order AESENC
// takes them.
func expandKey256(key []byte) [240]byte {
	var w [60]uint32
	for i := range 8 {
		w[i] = binary.BigEndian.Uint32(key[4*i:])
	}
	rcon := uint32(1)
	for i := 8; i < 60; i++ {
		t := w[i-1]
		switch i % 8 {
		case 0:
			t = subWord(t<<8|t>>24) ^ rcon<<24
			rcon = uint32(xtime(byte(rcon)))
		case 4:
			t = subWord(t)
		}
		w[i] = w[i-8] ^ t
	}
	var out [240]byte
	for i, x := range w {
		binary.BigEndian.PutUint32(out[4*i:], x)
	}
	return out
}

// decryptionKeys turns encryption round keys into AESDEC's: reversed,
// with InvMixColumns applied to all but the first and last.
func decryptionKeys(ek *[240]byte) [240]byte {
	var dk [240]byte
	copy(dk[0:16], ek[224:240])
	for i := 1; i < 14; i++ {
		copy(dk[i*16:], ek[(14-i)*16:(15-i)*16])
		invMixColumns(dk[i*16 : i*16+16])
	}
	copy(dk[224:240], ek[0:16])
	return dk
}

func gmul(a, b byte) byte {
	var p byte
	for ; b != 0; b >>= 1 {
		if b&1 != 0 {
			p ^= a
		}
		a = xtime(a)
	}
	return p
}

func invMixColumns(s []byte) {
	for c := 0; c < 16; c += 4 {
		a0, a1, a2, a3 := s[c], s[c+1], s[c+2], s[c+3]
		s[c] = gmul(a0, 14) ^ gmul(a1, 11) ^ gmul(a2, 13) ^ gmul(a3, 9)
		s[c+1] = gmul(a0, 9) ^ gmul(a1, 14) ^ gmul(a2, 11) ^ gmul(a3, 13)
		s[c+2] = gmul(a0, 13) ^ gmul(a1, 9) ^ gmul(a2, 14) ^ gmul(a3, 11)
		s[c+3] = gmul(a0, 11) ^ gmul(a1, 13) ^ gmul(a2, 9) ^ gmul(a3, 14)
	}
}
