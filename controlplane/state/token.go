package state

import (
	"fmt"

	"github.com/hashicorp/go-memdb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
)

// TokenBySecretHash returns the token whose secret hashes to hash (nil if
// none) and the index of the last change to tokens. With a non-nil ws it adds
// a watch on that token and on restore.
//
// The returned token is shared: it must not be mutated.
func (s *Store) TokenBySecretHash(ws memdb.WatchSet, hash []byte) (uint64, *meshfedv1.Token, error) {
	info, _ := LookupKind(meshfedv1.ResourceKind_RESOURCE_KIND_TOKEN)
	d := s.db.Load()
	tx := d.mem.Txn(false)
	defer tx.Abort()
	idx := kindIndexTxn(tx, nil, d, info.Table)
	if len(hash) == 0 {
		return idx, nil, nil
	}
	ch, raw, err := tx.FirstWatch(info.Table, tokenSecretHashIndex.name, hash)
	if err != nil {
		return 0, nil, fmt.Errorf("reading token by secret hash: %w", err)
	}
	if ws != nil {
		ws.Add(ch)
		ws.Add(d.abandonCh)
	}
	if raw == nil {
		return idx, nil, nil
	}
	return idx, raw.(*meshfedv1.Token), nil
}
