package svidclient

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/meshfed/meshfed/internal/tlsutil"
)

// Names of the files WriteFiles writes.
const (
	// SVIDFile holds the certificate chain, leaf first, PEM.
	SVIDFile = "svid.pem"
	// KeyFile holds the SVID's private key, PKCS#8 PEM, mode 0600.
	KeyFile = "key.pem"
	// BundleFile holds the roots of the SVID's trust domain, PEM.
	BundleFile = "bundle.pem"
)

// Files are the paths WriteFiles wrote.
type Files struct {
	SVID, Key, Bundle string
}

// WriteFiles writes the current SVID, its key and the trust domain's bundle
// into dir (created 0755 if missing) as SVIDFile, KeyFile and BundleFile.
// Each file is replaced atomically (a temporary file in dir, synced, then
// renamed), so a reader never sees a partial file. The bundle is written
// first and the chain last, so that a reader that sees a new chain also
// sees the roots it needs.
func (c *Client) WriteFiles(dir string) (Files, error) {
	c.mu.RLock()
	svid, own := c.svid, c.own
	c.mu.RUnlock()
	if svid == nil {
		return Files{}, ErrNoSVID
	}
	keyPEM, err := marshalKeyPEM(svid.PrivateKey)
	if err != nil {
		return Files{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Files{}, fmt.Errorf("creating %s: %w", dir, err)
	}
	files := Files{
		SVID:   filepath.Join(dir, SVIDFile),
		Key:    filepath.Join(dir, KeyFile),
		Bundle: filepath.Join(dir, BundleFile),
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
		data []byte
	}{
		{files.Bundle, 0o644, tlsutil.EncodeCertificatesPEM(own.X509Authorities())},
		{files.Key, 0o600, keyPEM},
		{files.SVID, 0o644, tlsutil.EncodeCertificatesPEM(svid.Certificates)},
	} {
		if err := writeFileAtomic(f.path, f.mode, f.data); err != nil {
			return Files{}, err
		}
	}
	return files, nil
}

// writeFileAtomic writes data to path through a temporary file in the same
// directory, created with mode, synced and renamed into place. On error the
// temporary file is removed and path is untouched.
func writeFileAtomic(path string, mode os.FileMode, data []byte) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			err = fmt.Errorf("writing %s: %w", path, err)
		}
	}()
	if err := tmp.Chmod(mode); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
