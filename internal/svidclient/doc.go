// Package svidclient obtains and keeps a workload's X.509 SVID: the library
// every workload and the per-pod proxy use to hold an identity issued by a
// meshfed cluster.
//
// A Client generates its private key locally (the key never leaves the
// process), attests once with a workload-join token to get its first SVID,
// renews it at half life over mutual TLS presenting the SVID it holds, and
// follows the trust bundle on the WatchBundle stream, acknowledging every
// bundle it applied. When the cluster's active CA authority differs from the
// one that issued the SVID (a rotation is under way), the client renews after
// a short random delay, so that a whole fleet moves to the new authority
// without renewing in the same instant.
//
// A Client is a go-spiffe x509svid.Source and x509bundle.Source (its own
// trust domain and every federated one), so it plugs into go-spiffe's
// tlsconfig and spiffegrpc packages; ServerTLSConfig and ClientTLSConfig
// build TLS 1.3 configurations that authorize peers by SPIFFE ID.
//
//	c, err := svidclient.New(svidclient.Config{
//		Addrs:  []string{"10.0.0.1:7700", "10.0.0.2:7700"},
//		CAFile: "/etc/meshfed/ca.pem",
//		Token:  os.Getenv("MESHFED_TOKEN"),
//	})
//	if err != nil { ... }
//	if err := c.Start(ctx); err != nil { ... } // blocks until the first SVID
//	defer c.Close()
//	srv := &http.Server{TLSConfig: c.ServerTLSConfig(tlsconfig.AuthorizeMemberOf(td))}
package svidclient
