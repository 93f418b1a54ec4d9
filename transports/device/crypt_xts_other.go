//go:build !amd64 || purego

package device

const haveAESNI = false

func cryptUnitAESNI(*[240]byte, []byte, []byte, *[CryptBlockBytes]byte) {
	panic("device: no AES-NI XTS on this platform")
}

func decryptUnitAESNI(*[240]byte, []byte, []byte, *[CryptBlockBytes]byte) {
	panic("device: no AES-NI XTS on this platform")
}
