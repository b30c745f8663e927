module paxoskv.local/smokepod

go 1.24
