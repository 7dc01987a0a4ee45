"""ProfileService servicer: convert, delegate to ``ProfileCore``, convert back. No logic here."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from server._gen.portrait.v1 import portrait_pb2 as pb
from server._gen.portrait.v1 import portrait_pb2_grpc as pb_grpc
from server.api import convert
from server.domain.events import Event
from server.worker.core import ProfileCore
from server.worker.partition import DEFAULT_RECOMMEND


class ProfileServicer(pb_grpc.ProfileServiceServicer):
    """The ``portrait.v1.ProfileService`` implementation."""

    def __init__(self, core: ProfileCore | Any, workers: Callable[[], Any] | None = None) -> None:
        self.core = core
        # (partitions, every process' status), or an awaitable of it: the runner's report
        self.workers = workers

    async def Track(self, request: pb.TrackRequest, context: grpc.aio.ServicerContext) -> pb.TrackResponse:
        out = await self.core.track(convert.event_from_proto(request.event), request.wait_visible)
        return pb.TrackResponse(duplicate=out.duplicate, profile_version=out.version,
                                purchase_propensity=out.propensity, segment=out.segment, suppressed=out.suppressed)

    async def TrackBatch(self, request: pb.TrackBatchRequest,
                         context: grpc.aio.ServicerContext) -> pb.TrackBatchResponse:
        result = await self.core.track_many((convert.event_from_proto(m) for m in request.events),
                                            request.wait_visible)
        return convert.batch_response(result)

    async def TrackStream(self, request_iterator: AsyncIterator[pb.Event],
                          context: grpc.aio.ServicerContext) -> pb.TrackBatchResponse:
        async def events() -> AsyncIterator[Event]:
            async for m in request_iterator:
                yield convert.event_from_proto(m)

        return convert.batch_response(await self.core.track_stream(events()))

    async def GetProfile(self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext) -> pb.Profile:
        return convert.profile_to_proto(await self.core.get_profile(request.user_id))

    async def UpdateAttributes(self, request: pb.UpdateAttributesRequest,
                               context: grpc.aio.ServicerContext) -> pb.UpdateAttributesResponse:
        a = request.attributes
        version = await self.core.update_attributes(request.user_id, a.age, a.gender, a.region)
        return pb.UpdateAttributesResponse(profile_version=version)

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        ranked = await self.core.score(request.user_id, convert.candidates_from_proto(request))
        return convert.score_response(ranked)

    async def Recommend(self, request: pb.RecommendRequest,
                        context: grpc.aio.ServicerContext) -> pb.RecommendResponse:
        ranked = await self.core.recommend(request.user_id, request.k or DEFAULT_RECOMMEND)
        return pb.RecommendResponse(items=[pb.ScoredItem(item_id=i, probability=p) for i, p in ranked])

    async def DeleteUser(self, request: pb.DeleteUserRequest,
                         context: grpc.aio.ServicerContext) -> pb.DeleteUserResponse:
        return pb.DeleteUserResponse(existed=await self.core.delete_user(request.user_id))

    async def UnsuppressUser(self, request: pb.UnsuppressUserRequest,
                             context: grpc.aio.ServicerContext) -> pb.UnsuppressUserResponse:
        return pb.UnsuppressUserResponse(was_suppressed=await self.core.unsuppress_user(request.user_id))

    async def Compact(self, request: pb.CompactRequest, context: grpc.aio.ServicerContext) -> pb.CompactResponse:
        r = await self.core.compact()
        return pb.CompactResponse(offline_files=r.offline_files, log_segments=r.log_segments,
                                  checkpoints=r.checkpoints, erased_users=r.erased_users)

    async def Workers(self, request: pb.WorkersRequest, context: grpc.aio.ServicerContext) -> pb.WorkersResponse:
        if self.workers is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this server reports no workers")
        assert self.workers is not None
        report = self.workers()
        partitions, processes = await report if inspect.isawaitable(report) else report
        return convert.workers_response(partitions, processes)
