module bbr/benches/go

go 1.19
