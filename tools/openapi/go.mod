// Pins protoc-gen-openapiv2, the generator of openapi/entitlements.v1.yaml (tools/genopenapi.py builds it from
// here): the same version gives a byte-identical document. Nothing in this module is imported by the project.
module github.com/xsolla-entitlements/entitlements/tools/openapi

go 1.26.0

tool github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-openapiv2

require (
	github.com/grpc-ecosystem/grpc-gateway/v2 v2.33.0 // indirect
	go.yaml.in/yaml/v3 v3.0.5 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20261026165753-2ffab32bce7e // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261019180522-ce908d29299b // indirect
	google.golang.org/grpc v1.84.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
