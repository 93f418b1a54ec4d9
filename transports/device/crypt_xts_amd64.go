//go:build amd64 && !purego

package device

import "golang.org/x/sys/cpu"

//go:noescape
func xtsEncBlocks(rk *byte, dst, src, tw *byte, n int)

//go:noescape
func xtsDecBlocks(rk *byte, dst, src, tw *byte, n int)

var haveAESNI = cpu.X86.HasAES && cpu.X86.HasSSE41

// cryptUnitAESNI encrypts or decrypts one CryptBlockBytes data unit whose
// tweaks are in tw.
func cryptUnitAESNI(rk *[240]byte, dst, src []byte, tw *[CryptBlockBytes]byte) {
	xtsEncBlocks(&rk[0], &dst[0], &src[0], &tw[0], CryptBlockBytes/16)
}

func decryptUnitAESNI(rk *[240]byte, dst, src []byte, tw *[CryptBlockBytes]byte) {
	xtsDecBlocks(&rk[0], &dst[0], &src[0], &tw[0], CryptBlockBytes/16)
}
