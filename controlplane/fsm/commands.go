package fsm

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

// MessageType is the first byte of every Raft command and says how the rest
// decodes. Values are append-only: a log written by one version of meshfed
// is applied by every later one.
type MessageType uint8

const (
	// UpsertResourceType creates or replaces a resource; the body is a
	// ResourceWrite.
	UpsertResourceType MessageType = 1
	// DeleteResourceType deletes a resource; the body is a ResourceWrite.
	DeleteResourceType MessageType = 2
	// BatchWriteType applies several writes atomically; the body is a
	// ResourceWriteBatch.
	BatchWriteType MessageType = 3
)

func (t MessageType) String() string {
	switch t {
	case UpsertResourceType:
		return "UpsertResource"
	case DeleteResourceType:
		return "DeleteResource"
	case BatchWriteType:
		return "BatchWrite"
	default:
		return fmt.Sprintf("MessageType(%d)", uint8(t))
	}
}

// Encode returns the Raft command of type t with body m: one type byte, then
// m in protobuf wire format (deterministic, so equal commands encode
// equally).
func Encode(t MessageType, m proto.Message) ([]byte, error) {
	if _, ok := commands[t]; !ok {
		return nil, fmt.Errorf("encoding command: unknown message type %d", uint8(t))
	}
	buf := []byte{byte(t)}
	buf, err := proto.MarshalOptions{Deterministic: true}.MarshalAppend(buf, m)
	if err != nil {
		return nil, fmt.Errorf("encoding %v command: %w", t, err)
	}
	return buf, nil
}
