package controlplane

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meshfedv1 "github.com/meshfed/meshfed/api/meshfed/v1"
	"github.com/meshfed/meshfed/ca"
	"github.com/meshfed/meshfed/controlplane/validate"
)

const kindCASettings = meshfedv1.ResourceKind_RESOURCE_KIND_CA_SETTINGS

// withCADefaults fills every unset field of s with the default, so that the
// stored settings say exactly what is in force.
func withCADefaults(s *meshfedv1.CASettings) *meshfedv1.CASettings {
	if s.Meta == nil {
		s.Meta = &meshfedv1.Meta{}
	}
	if s.Meta.Name == "" {
		s.Meta.Name = validate.CASettingsName
	}
	if s.KeyAlgorithm == meshfedv1.KeyAlgorithm_KEY_ALGORITHM_UNSPECIFIED {
		s.KeyAlgorithm = meshfedv1.KeyAlgorithm_KEY_ALGORITHM_ECDSA_P256
	}
	if s.RootTtl == nil {
		s.RootTtl = durationpb.New(ca.DefaultRootTTL)
	}
	if s.IntermediateTtl == nil {
		s.IntermediateTtl = durationpb.New(ca.DefaultIntermediateTTL)
	}
	if s.SvidTtl == nil {
		s.SvidTtl = durationpb.New(ca.DefaultSVIDTTL)
	}
	return s
}

// caSettings returns the settings in force: the stored ones, or the
// defaults before an operator changed anything.
func (s *Server) caSettings() *meshfedv1.CASettings {
	_, r, err := s.store().Get(nil, kindCASettings, "", validate.CASettingsName)
	if err != nil || r == nil {
		return withCADefaults(&meshfedv1.CASettings{})
	}
	return r.(*meshfedv1.CASettings)
}

// intermediateTTL is the lifetime of new intermediates.
func (s *Server) intermediateTTL() time.Duration {
	if s.cfg.intermediateTTL > 0 {
		return s.cfg.intermediateTTL
	}
	return s.caSettings().GetIntermediateTtl().AsDuration()
}

func (a *apiServer) GetCASettings(context.Context, *meshfedv1.GetCASettingsRequest) (*meshfedv1.CASettings, error) {
	return a.s.caSettings(), nil
}

// UpdateCASettings replaces the CA settings; unset fields take their
// defaults. New lifetimes and the key algorithm apply to what is issued
// next: SVIDs at once, intermediates at their next renewal, roots at the
// next rotation.
func (a *apiServer) UpdateCASettings(ctx context.Context, req *meshfedv1.UpdateCASettingsRequest) (*meshfedv1.CASettings, error) {
	in := req.GetSettings()
	if in == nil {
		in = &meshfedv1.CASettings{}
	} else {
		in = proto.Clone(in).(*meshfedv1.CASettings)
	}
	return writeResource(ctx, a.s, kindCASettings, "settings", withCADefaults(in), req.GetExpectedVersion(), modeUpsert)
}
