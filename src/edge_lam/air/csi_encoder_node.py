"""CSI encoder node: ``edge_lam_msgs/ChannelState`` windows on ``csi`` to three readable tokens (dominant beam,
delay spread, ageing) and the window's patch embedding on ``tokens/csi`` (one message per window)."""

from __future__ import annotations

import time

from edge_lam_msgs.msg import ChannelState

from edge_lam.air.csi_tokens import CsiBins, CsiEncoder
from edge_lam.encoders.encoder_node import EncoderNode
from edge_lam.ros.main import spin_node
from edge_lam.ros.parameters import declare
from edge_lam.wire.csi import from_channel_state

DEFAULTS = CsiBins()


class CsiEncoderNode(EncoderNode):
    def __init__(self, node_name: str = "csi_encoder", **kwargs) -> None:
        super().__init__(node_name, modality="csi", default_sensor="csi", **kwargs)
        bins = CsiBins(
            antennas=declare(self, "antennas", DEFAULTS.antennas,
                             "Base-station antennas of the CSI (the codebook's size); other windows are rejected.",
                             low=1, high=4096),
            oversample=declare(self, "codebook_oversample", DEFAULTS.oversample,
                               "Oversampling of the DFT beam codebook: oversample x antennas beam tokens.",
                               low=1, high=64),
            delay_spread_edges_ns=tuple(declare(self, "delay_spread_edges_ns", list(DEFAULTS.delay_spread_edges_ns),
                                                "RMS delay spread bucket edges, ns, ascending.")),
            delay_spread_names=tuple(declare(self, "delay_spread_names", list(DEFAULTS.delay_spread_names),
                                             "Delay spread bucket names, one more than delay_spread_edges_ns.")),
            doppler_edges_hz=tuple(declare(self, "doppler_edges_hz", list(DEFAULTS.doppler_edges_hz),
                                           "Doppler (channel ageing) bucket edges, Hz, ascending.")),
            ageing_names=tuple(declare(self, "ageing_names", list(DEFAULTS.ageing_names),
                                       "Ageing bucket names, one more than doppler_edges_hz.")),
        )
        self._core = CsiEncoder(bins)
        self.publish_vocabulary(self._core.vocabulary)
        self.create_subscription(ChannelState, "csi", self.encode, self.input_qos)

    def encode(self, msg: ChannelState) -> None:
        started = time.perf_counter()
        try:
            window = from_channel_state(msg)
            encoded = self._core.encode(window.h, window.subcarrier_spacing_hz, window.period_s,
                                        window.noise_variance)
        except Exception as err:  # EncoderInputError, or anything else: logged, never the node's end
            self.reject("CSI window", err, msg.header.stamp)
            return
        self.publish_tokens(encoded, msg.header, started)


def main(args: list[str] | None = None) -> None:
    spin_node(CsiEncoderNode, args)
