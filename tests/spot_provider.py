"""Ray's fake multi-node provider (RAY_FAKE_CLUSTER=1: each node a raylet on this machine), with nodes
that can be lost the way a spot instance is: a node whose raylet has died is reported terminated, as
EC2 reports a reclaimed instance, so the autoscaler replaces it when trials still need it. (Ray's own
fake provider keeps listing a dead node as pending forever.) Loaded by tests/test_autoscale.py's head
as `provider: {type: external, module: spot_provider.SpotFakeProvider}`; RefusedProvider launches nothing."""
from ray._private import ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class SpotFakeProvider(FakeMultiNodeProvider):
    def non_terminated_nodes(self, tag_filters):
        with self.lock:
            for node_id, entry in list(self._nodes.items()):
                node = entry.get("node")   # the head has none: it is not this provider's to lose
                if node is not None and any(kind == ray_constants.PROCESS_TYPE_RAYLET for kind, _ in node.dead_processes()):
                    node.kill_all_processes(check_alive=False, allow_graceful=False)
                    del self._nodes[node_id]
        return super().non_terminated_nodes(tag_filters)


class RefusedProvider(FakeMultiNodeProvider):
    """A provider whose every launch fails, as EC2 refuses RunInstances when the head's role may not resolve
    the AMI's Systems Manager parameter (Ray's AWS provider raises NodeLaunchException, as here)."""

    def create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        from ray.autoscaler.node_launch_exception import NodeLaunchException

        raise NodeLaunchException(
            "UnauthorizedOperation", "You are not authorized to perform: ssm:GetParameters on resource: "
            "arn:aws:ssm:us-west-2::parameter/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/"
            "latest/ami-id", None)
