// Build recipe for the node's sandbox (pause) image: main.go is the whole program, standard
// library only, so there is no go.sum.
module ray-pixi.test/kube/pause

go 1.26.0
