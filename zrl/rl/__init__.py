"""The pure algorithm layer: TreePO sampling, advantages, loss, rewards, data and the tiny model. No sockets."""
