module paxoskv.local/pause

go 1.24
