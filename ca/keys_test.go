package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

func TestPrivateKeyPEM(t *testing.T) {
	for _, alg := range []meshfedv1.KeyAlgorithm{
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256,
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P384,
		meshfedv1.KeyAlgorithm_KEY_ALGORITHM_RSA_2048,
	} {
		t.Run(alg.String(), func(t *testing.T) {
			key, err := parsePKCS8(cachedAuthority(t, alg).GetIntermediateKey())
			if err != nil {
				t.Fatal(err)
			}
			data, err := MarshalPrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			if b, _ := pem.Decode(data); b == nil || b.Type != "PRIVATE KEY" {
				t.Fatalf("not a PKCS#8 PEM block:\n%s", data)
			}
			got, err := ParsePrivateKey(data)
			if err != nil {
				t.Fatal(err)
			}
			if !got.(interface{ Equal(crypto.PrivateKey) bool }).Equal(key) {
				t.Error("parsed key differs")
			}
		})
	}
}

func TestParsePrivateKeyRejects(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"not PEM", []byte("hello")},
		{"SEC 1 key", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})},
		{"certificate", []byte(cachedAuthority(t, meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256).GetAuthority().GetRootPem())},
		{"garbage body", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("garbage")})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParsePrivateKey(tt.data); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("err = %v, want ErrInvalidKey", err)
			}
		})
	}
}
